"""The same key-pool behaviour from both stores: LocalKeyPool (in process) and RedisKeyPool (a real redis-server).

The rules: a key at its concurrency is never leased (a waiter gets it when it is released); a key over its rpm is
skipped and the Retry-After says when it frees; a 429 cools the key for that model only; a key refused with 401
is not used until its probe, and every key refused is a 503; every lease is released on every path, cancellation
included; real usage replaces the estimate. Redis also survives a restart (no state, no cached scripts).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megagate.config import KeyConfig, Rotation
from megagate.core.errors import NoKeyAvailable, NoUsableKey, PoolUnavailable
from megagate.core.outcome import Outcome
from megagate.pool import KeyPool
from megagate.pool.local import LocalKeyPool
from megagate.pool.redis_store import RETRY_REDIS_AFTER, RedisKeyPool
from megagate.pool.resp import RedisClient
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

KEY_A, KEY_B = "sk-mega-pool-test-aaaa1111", "sk-mega-pool-test-bbbb2222"
Maker = Callable[..., Any]


class ManualClock:
    """The pool's own clock, driven by hand (Redis keeps its own time for the windows)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def make_pool(request: pytest.FixtureRequest, redis_server: RedisServer) -> Maker:
    """`async with make_pool(keys, **rotation) as pool`: a fresh pool of the parametrized store."""

    @asynccontextmanager
    async def make(keys: list[KeyConfig], **rotation: Any) -> AsyncIterator[KeyPool]:
        if request.param == "memory":
            yield LocalKeyPool("up", keys, Rotation(**rotation))
            return
        async with RedisClient.from_url(redis_server.url, timeout=1) as client:
            yield RedisKeyPool("up", keys, Rotation(**rotation), client=client, prefix=secrets.token_hex(4))

    return make


async def test_leases_rotate_and_usage_settles(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A), KeyConfig(key=KEY_B)]) as pool:
        first, second = await pool.acquire(100), await pool.acquire(100)
        assert ({first.key, second.key} == {KEY_A, KEY_B} and first.mask.endswith("1111")) or first.mask.endswith(
            "2222"
        )
        await pool.release(first, Outcome.SUCCESS, tokens_used=7)
        await pool.release(second, Outcome.SUCCESS)
        reports = {r.mask[-4:]: r for r in await pool.report()}
        settled = reports[first.key[-4:]]
        assert settled.in_flight == 0 and settled.tokens_last_minute == 7 and settled.requests_last_minute == 1
        assert KEY_A not in repr(reports) and KEY_B not in repr(reports)


async def test_a_key_at_its_concurrency_is_not_leased_and_a_waiter_gets_it(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A, max_concurrency=1)]) as pool:
        held = await pool.acquire(1)
        with pytest.raises(NoKeyAvailable):
            await pool.acquire(1, max_wait=0)
        got: list[str] = []
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                got.append((await pool.acquire(1, max_wait=3)).id)

            group.start_soon(wait)
            await anyio.sleep(0.2)
            assert got == []
            await pool.release(held, Outcome.SUCCESS)
        assert got == [held.id]


async def test_rpm_is_kept_and_the_retry_after_says_when(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A, rpm=2)]) as pool:
        for _ in range(2):
            await pool.release(await pool.acquire(1), Outcome.SUCCESS)
        with pytest.raises(NoKeyAvailable) as caught:
            await pool.acquire(1, max_wait=0.2)
        assert caught.value.retry_after is not None and 58 < caught.value.retry_after <= 60


async def test_a_429_cools_the_key_for_that_model_only(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A)]) as pool:
        lease = await pool.acquire(1, model="gpt-5")
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after=30)
        with pytest.raises(NoKeyAvailable) as caught:
            await pool.acquire(1, model="gpt-5")
        assert caught.value.retry_after is not None and 28 < caught.value.retry_after <= 30
        other = await pool.acquire(1, model="claude")
        await pool.release(other, Outcome.SUCCESS)
        report = (await pool.report())[0]
        assert report.state == "active" and 28 < report.cooling_models["gpt-5"] <= 30


async def test_every_key_refused_is_a_503_until_the_probe(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A), KeyConfig(key=KEY_B)], probe_interval=600) as pool:
        for _ in range(2):
            await pool.release(await pool.acquire(1), Outcome.AUTH_FAILED, error="refused")
        with pytest.raises(NoUsableKey) as caught:
            await pool.acquire(1, max_wait=1)
        assert caught.value.status == 503 and caught.value.retry_after is not None
        assert 590 < caught.value.retry_after <= 600
        assert [r.state for r in await pool.report()] == ["disabled", "disabled"] and not pool.usable()


async def test_a_cancelled_waiter_and_a_cancelled_holder_leak_nothing(make_pool: Maker) -> None:
    async with make_pool([KeyConfig(key=KEY_A, max_concurrency=1)]) as pool:
        held = await pool.acquire(1)
        with anyio.move_on_after(0.1):
            await pool.acquire(1, max_wait=5)  # cancelled while waiting
        with anyio.CancelScope(shield=True):
            await pool.release(held, Outcome.CANCELLED)
        assert [r.in_flight for r in await pool.report()] == [0]
        again = await pool.acquire(1, max_wait=0)
        await pool.release(again, Outcome.SUCCESS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.sampled_from(list(Outcome))),
                      max_size=20))  # fmt: skip
async def test_in_flight_never_exceeds_max_concurrency(make_pool: Maker, steps: list[tuple[str, Outcome]]) -> None:
    """Any sequence of acquires and releases (with any outcome): no key is ever over its concurrency, and once
    everything is released nothing is in flight."""
    keys = [KeyConfig(key=KEY_A, max_concurrency=2), KeyConfig(key=KEY_B, max_concurrency=1)]
    async with make_pool(keys) as pool:
        held = []
        for step, outcome in steps:
            if step == "acquire":
                with contextlib.suppress(NoKeyAvailable):
                    held.append(await pool.acquire(1, max_wait=0))
            elif held:
                await pool.release(held.pop(0), outcome)
            reports = await pool.report()
            assert all(r.in_flight <= (r.max_concurrency or 99) for r in reports)
        for lease in held:
            await pool.release(lease, Outcome.SUCCESS)
        assert [r.in_flight for r in await pool.report()] == [0, 0]


async def test_redis_restarted_serves_again_with_its_scripts_reloaded(tmp_path: Any) -> None:
    """A restarted Redis has no state and no scripts: EVALSHA's NOSCRIPT is answered by loading them again, and
    the connections that went stale during the outage are replaced. With on_redis_error = "fail", the outage itself
    is a prompt 503, never a hang."""
    server = RedisServer(tmp_path)
    try:
        async with RedisClient.from_url(server.url, timeout=0.5) as client:
            clock = ManualClock()
            pool = RedisKeyPool("up", [KeyConfig(key=KEY_A)], client=client, clock=clock)
            await pool.release(await pool.acquire(1), Outcome.SUCCESS)
            server.stop()
            with anyio.fail_after(3):
                with pytest.raises(PoolUnavailable) as caught:
                    await pool.acquire(1)
            assert caught.value.status == 503 and caught.value.retry_after is not None
            server.start()
            clock.now += RETRY_REDIS_AFTER  # the pool asks Redis again once the back-off is over
            lease = await pool.acquire(1)
            await pool.release(lease, Outcome.SUCCESS)
            assert (await pool.report())[0].requests_last_minute == 1  # a fresh Redis: only this one
    finally:
        server.stop()


async def test_redis_down_with_local_fallback_keeps_serving(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    try:
        async with RedisClient.from_url(server.url, timeout=0.5) as client:
            keys = [KeyConfig(key=KEY_A, rpm=10)]
            clock = ManualClock()
            pool = RedisKeyPool("up", keys, client=client, on_redis_error="local", workers=2, clock=clock)
            server.stop()
            with anyio.fail_after(3):
                leases = [await pool.acquire(1) for _ in range(5)]  # rpm 10 over 2 workers: 5 here
                with pytest.raises(NoKeyAvailable):
                    await pool.acquire(1)
            for lease in leases:
                await pool.release(lease, Outcome.SUCCESS)
            server.start()
            clock.now += RETRY_REDIS_AFTER
            await pool.release(await pool.acquire(1), Outcome.SUCCESS)  # back on the shared store
            assert (await pool.report())[0].requests_last_minute == 1
    finally:
        server.stop()


async def test_a_clients_rpm_holds_across_gateways_sharing_redis(redis_server: RedisServer) -> None:
    """Two gateways (as two workers would be) on one Redis: a client with rpm = 3 gets its fourth request refused,
    wherever it lands."""
    from megagate.app import create_app
    from megagate.config import config_from_mapping
    from megagate.upstream.mock import MockResponse, MockTransport
    from tests.inprocess import COMPLETION, call

    settings = {
        "access_log": False,
        "usage": {"store": "off"},
        "pool": {"store": "redis", "redis_url": redis_server.url, "prefix": secrets.token_hex(4)},
        "clients": [{"name": "ci", "key": "client-key-shared-0001", "rpm": 3}],
        "upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": [KEY_A]}],
    }
    config = config_from_mapping(settings, environ={})
    gateways = [create_app(config, transport=MockTransport(lambda _: MockResponse(body=[COMPLETION]))) for _ in "ab"]
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer client-key-shared-0001")]
    async with gateways[0].running(), gateways[1].running():
        statuses = [(await call(gateways[n % 2], headers=headers)).status for n in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_a_session_stays_on_its_key_while_the_key_has_headroom(make_pool: Maker) -> None:
    """Affinity: a conversation returns to the key it last used (its prompt cache), however the rotation moved
    meanwhile; when that key is full it goes elsewhere, and comes back once the key frees."""
    keys = [KeyConfig(key=KEY_A, max_concurrency=1), KeyConfig(key=KEY_B, max_concurrency=1)]
    async with make_pool(keys) as pool:
        first = await pool.acquire(1, session="conversation-1")
        await pool.release(first, Outcome.SUCCESS)
        for _ in range(3):  # other traffic moves the rotation on
            await pool.release(await pool.acquire(1), Outcome.SUCCESS)
        again = await pool.acquire(1, session="conversation-1")
        assert again.id == first.id
        elsewhere = await pool.acquire(1, session="conversation-1")  # its key is at its concurrency now
        assert elsewhere.id != first.id
        await pool.release(again, Outcome.SUCCESS)
        await pool.release(elsewhere, Outcome.SUCCESS)
        assert (await pool.acquire(1, session="conversation-1")).id == elsewhere.id  # it follows the last key used
