"""LocalKeyPool: the async pool interface over the scheduler: bounded waits, wake-up on release, no leaked slot."""

from __future__ import annotations

import anyio
import pytest

from megagate.config import KeyConfig, Rotation
from megagate.core.errors import NoKeyAvailable
from megagate.core.outcome import Outcome
from megagate.pool.local import LocalKeyPool

pytestmark = pytest.mark.anyio

KEYS = [KeyConfig(key="sk-mega-first-key-aaaa1111", max_concurrency=1), KeyConfig(key="sk-mega-second-key-bbbb2222")]


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_leases_carry_the_key_its_id_and_mask_and_rotate() -> None:
    pool = LocalKeyPool("up", KEYS, clock=ManualClock())
    first = await pool.acquire(10)
    second = await pool.acquire(10)
    assert (first.key, second.key) == (KEYS[0].key, KEYS[1].key)
    assert first.mask == "sk-mega-…1111" and first.id.startswith("key-")
    await pool.release(first, Outcome.SUCCESS, tokens_used=42)
    await pool.release(second, Outcome.SUCCESS)
    reports = await pool.report()
    assert [r.in_flight for r in reports] == [0, 0]
    assert reports[0].tokens_last_minute == 42 and reports[0].requests_last_minute == 1
    assert KEYS[0].key not in repr(reports)


async def test_no_wait_gives_no_key_available_with_retry_after() -> None:
    clock = ManualClock()
    pool = LocalKeyPool("up", KEYS, clock=clock)
    first = await pool.acquire(10)
    second = await pool.acquire(10)
    await pool.release(second, Outcome.RATE_LIMITED, retry_after=7)
    with pytest.raises(NoKeyAvailable) as caught:
        await pool.acquire(10, max_wait=0)
    # key 1 frees only on release (unknown), key 2 in 7 s: the answer is the known one.
    assert caught.value.retry_after == pytest.approx(7)
    assert caught.value.status == 429
    await pool.release(first, Outcome.SUCCESS)
    reports = await pool.report()
    assert reports[1].state == "cooling" and reports[1].cooling_for == pytest.approx(7)


async def test_a_waiter_gets_the_slot_a_release_frees() -> None:
    pool = LocalKeyPool("up", KEYS[:1], clock=ManualClock())
    held = await pool.acquire(10)
    got = []

    async def wait_for_key() -> None:
        got.append(await pool.acquire(10, max_wait=10))

    async with anyio.create_task_group() as group:
        group.start_soon(wait_for_key)
        await anyio.wait_all_tasks_blocked()
        assert not got
        await pool.release(held, Outcome.SUCCESS)
    assert got and got[0].key == KEYS[0].key
    await pool.release(got[0], Outcome.SUCCESS)


async def test_a_wait_past_the_bound_fails_and_a_cancelled_waiter_leaks_nothing() -> None:
    pool = LocalKeyPool("up", KEYS[:1])
    held = await pool.acquire(10)
    with anyio.move_on_after(0.05):
        await pool.acquire(10, max_wait=10)
    with pytest.raises(NoKeyAvailable):
        await pool.acquire(10, max_wait=0.05)
    await pool.release(held, Outcome.SUCCESS)
    assert [r.in_flight for r in await pool.report()] == [0]
    assert not pool._waiters


async def test_waits_out_a_short_cooldown() -> None:
    pool = LocalKeyPool("up", KEYS[1:])
    lease = await pool.acquire(10)
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after=0.05)
    started = anyio.current_time()
    lease = await pool.acquire(10, max_wait=1)
    assert anyio.current_time() - started >= 0.04
    await pool.release(lease, Outcome.SUCCESS)


async def test_a_cooldown_longer_than_the_bound_fails_at_once() -> None:
    pool = LocalKeyPool("up", KEYS[1:])
    lease = await pool.acquire(10)
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after=30)
    with anyio.fail_after(1):
        with pytest.raises(NoKeyAvailable) as caught:
            await pool.acquire(10, max_wait=2)
    assert caught.value.retry_after == pytest.approx(30, abs=0.1)


async def test_excluding_every_key_fails_and_auth_failure_disables() -> None:
    pool = LocalKeyPool("up", KEYS, Rotation(probe_interval=60), clock=ManualClock())
    lease = await pool.acquire(10)
    await pool.release(lease, Outcome.AUTH_FAILED, error="refused")
    with pytest.raises(NoKeyAvailable):
        await pool.acquire(10, exclude=frozenset(r.id for r in await pool.report()))
    reports = await pool.report()
    assert reports[0].state == "disabled" and reports[0].last_error == "refused"
    assert pool.usable()  # the second key still serves
    assert (await pool.acquire(10)).key == KEYS[1].key


async def test_a_key_held_back_only_by_concurrency_is_waited_for() -> None:
    """One key out of rpm for a minute, the other at max_concurrency: the pool waits for a release (within
    max_wait) instead of answering 429 at once (issue 15's measured early refusal)."""
    pool = LocalKeyPool("up", [KeyConfig(key="sk-rpm-key-000001", rpm=1),
                               KeyConfig(key="sk-busy-key-00002", max_concurrency=1)])  # fmt: skip
    first = await pool.acquire(1)  # the rpm key: now out of rpm for 60 s
    busy = await pool.acquire(1)  # the busy key: now at its concurrency
    assert {first.id, busy.id} == {r.id for r in await pool.report()}
    async with anyio.create_task_group() as group:
        got: list[str] = []

        async def wait_for_a_key() -> None:
            got.append((await pool.acquire(1, max_wait=2.0)).id)

        group.start_soon(wait_for_a_key)
        await anyio.sleep(0.05)
        assert got == []
        await pool.release(busy, Outcome.SUCCESS)
    assert got == [busy.id]
