"""The shared store under faults, as a gateway meets them: every failure of Redis, in any phase of a connection,
becomes the configured policy (503 + Retry-After, or the local pools), the gateway's background maintenance lives
through it, and requests go through Redis again once it answers. And windows larger than Lua can unpack."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import anyio
import pytest

from megagate.app import create_app
from megagate.config import KeyConfig, config_from_mapping
from megagate.core.outcome import Outcome
from megagate.pool.redis_store import RETRY_REDIS_AFTER, RedisKeyPool
from megagate.pool.resp import RedisClient
from megagate.upstream.mock import MockResponse, MockTransport
from tests.conftest import RedisServer
from tests.inprocess import COMPLETION, call
from tests.redis_faults import FaultyRedis

pytestmark = pytest.mark.anyio
KEY = "sk-mega-faults-aaaa1111"


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def faulty_gateway(url: str, policy: str, clock: ManualClock) -> Any:
    settings = {
        "access_log": False,
        "usage": {"store": "off"},
        "timeouts": {"pool": 0.3},  # the Redis client's bound per call (a silent Redis costs this much)
        "pool": {
            "store": "redis",
            "redis_url": url,
            "prefix": secrets.token_hex(4),
            "on_redis_error": policy,
            "lease_ttl": 0.3,
        },  # fmt: skip -- maintenance every 0.1 s
        "upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": [KEY]}],
    }
    transport = MockTransport(lambda _: MockResponse(body=[COMPLETION]))
    return create_app(config_from_mapping(settings, environ={}), transport=transport, clock=clock)


@pytest.mark.parametrize("mode", ["reset", "half_reply", "silent", "readonly", "malformed"])
@pytest.mark.parametrize("policy", ["fail", "local"])
async def test_each_fault_becomes_the_policy_and_the_gateway_serves_through_redis_again(
    redis_server: RedisServer, mode: str, policy: str
) -> None:
    async with FaultyRedis(redis_server.port).serving() as proxy:
        clock = ManualClock()
        gateway = faulty_gateway(proxy.url, policy, clock)
        async with gateway.running():
            assert (await call(gateway)).status == 200
            proxy.mode = mode  # type: ignore[assignment]  # "reset": the retry on a fresh connection meets it too
            answer = await call(gateway)
            if policy == "fail":
                assert answer.status == 503 and answer.header(b"retry-after") == b"1", answer.body
            else:
                assert answer.status == 200  # served from the local pool
            await anyio.sleep(0.35)  # maintenance rounds meet the fault too, and must go on
            proxy.mode = "pass"
            clock.now += RETRY_REDIS_AFTER  # the pools ask Redis again
            seen = len(proxy.forwarded)
            assert (await call(gateway)).status == 200
            assert len(proxy.forwarded) > seen  # through Redis again, not the local pool
            seen = len(proxy.forwarded)
            with anyio.fail_after(3):  # the maintenance loop still runs: it reaches Redis with no request
                while len(proxy.forwarded) == seen:  # noqa: ASYNC110 -- a count kept by another task, polled
                    await anyio.sleep(0.02)


async def test_an_unreachable_redis_is_said_in_one_line_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    from megagate.serve import free_port

    gateway = faulty_gateway(f"redis://:pw@127.0.0.1:{free_port()}/0", "fail", ManualClock())
    logger = logging.getLogger("megagate")
    logger.addHandler(caplog.handler)
    try:
        async with gateway.running():
            await anyio.sleep(0.05)
            answer = await call(gateway)
    finally:
        logger.removeHandler(caplog.handler)
    assert answer.status == 503
    lines = [r.getMessage() for r in caplog.records if "does not answer yet" in r.getMessage()]
    assert len(lines) == 1 and "cannot connect to Redis at 127.0.0.1:" in lines[0] and "pw" not in lines[0]
    assert "requests get 503" in lines[0]


async def test_a_key_with_only_tpm_serves_20000_requests_in_one_window(redis_server: RedisServer) -> None:
    """Lua's unpack() fails past about 8,000 values: the scripts summed a tpm window by unpacking every entry, so
    from the 8,001st request in a minute on, every request was a 503."""
    async with RedisClient.from_url(redis_server.url, timeout=5) as client:
        pool = RedisKeyPool("up", [KeyConfig(key=KEY, rpm=None, tpm=10**9)], client=client,
                            prefix=secrets.token_hex(4))  # fmt: skip
        limits = pool._limits[0]
        assert limits.tpm == 10**9 and (limits.rpm is None or limits.rpm >= 20_000), limits

        async def requests(count: int) -> None:
            for _ in range(count):
                lease = await pool.acquire(3)
                await pool.release(lease, Outcome.SUCCESS, tokens_used=5)

        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(requests, 1250)
        report = (await pool.report())[0]
        assert report.requests_last_minute == 20_000 and report.tokens_last_minute == 100_000  # settled: 5 each


async def test_a_full_tpm_window_says_when_enough_of_it_has_left(redis_server: RedisServer) -> None:
    """Past the chunk the scripts read at a time, the wait is still the time the oldest entries leave."""
    async with RedisClient.from_url(redis_server.url, timeout=5) as client:
        pool = RedisKeyPool("up", [KeyConfig(key=KEY, rpm=None, tpm=2_500)], client=client,
                            prefix=secrets.token_hex(4))  # fmt: skip
        for _ in range(2_500):
            await pool.release(await pool.acquire(1), Outcome.SUCCESS, tokens_used=1)
        from megagate.core.errors import NoKeyAvailable

        with pytest.raises(NoKeyAvailable) as caught:
            await pool.acquire(1)
        assert caught.value.retry_after is not None and 55 < caught.value.retry_after <= 60


async def test_entries_that_left_the_window_are_pruned_past_what_lua_can_unpack(redis_server: RedisServer) -> None:
    """12,000 entries older than the window (as after a burst a minute ago) leave it in chunks, their tokens with
    them, and the key is usable again at once."""
    async with RedisClient.from_url(redis_server.url, timeout=5) as client:
        pool = RedisKeyPool("up", [KeyConfig(key=KEY, rpm=None, tpm=100)], client=client,
                            prefix=secrets.token_hex(4))  # fmt: skip
        win, tok = pool._redis_keys[0][:2]
        seconds, _ = await client.execute("TIME")
        old = int(seconds) - 120
        for start in range(0, 12_000, 1_000):
            ids = [f"old{n}" for n in range(start, start + 1_000)]
            await client.execute("ZADD", win, *(part for i in ids for part in (old, i)))
            await client.execute("HSET", tok, *(part for i in ids for part in (i, 10)))
        await client.execute("HSET", tok, "=sum", 120_000)
        lease = await pool.acquire(50)  # 120,050 tokens in the window before the prune: refused without it
        await pool.release(lease, Outcome.SUCCESS, tokens_used=60)
        report = (await pool.report())[0]
        assert (report.requests_last_minute, report.tokens_last_minute) == (1, 60)
        assert await client.execute("HLEN", tok) == 2  # the one entry and the total
