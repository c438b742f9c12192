"""CancelOnDisconnect and Deadline on both loops: a disconnect or a deadline ends its block only; others go on."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from megagate.cancel import CancelOnDisconnect, Deadline

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """uvloop too: hypercorn's `-k uvloop` worker runs the same Task.cancel/uncancel path as asyncio."""
    return ("asyncio", {"use_uvloop": True}) if request.param == "uvloop" else request.param


async def leaves_at_once() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def stays() -> dict[str, Any]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def test_a_disconnect_ends_the_block_and_the_task_carries_on() -> None:
    async with CancelOnDisconnect(leaves_at_once) as watch:
        await anyio.sleep(5)
        raise AssertionError("not cancelled")
    assert watch.disconnected and not watch.expired
    with anyio.fail_after(1):
        await anyio.sleep(0.01)  # no cancellation left behind


async def test_the_deadline_ends_the_block_and_can_be_lifted() -> None:
    started = time.monotonic()
    async with CancelOnDisconnect(stays) as watch:
        watch.expire_after(0.05)
        await anyio.sleep(5)
    assert watch.expired and not watch.disconnected and time.monotonic() - started < 1
    async with CancelOnDisconnect(stays) as lifted:
        lifted.expire_after(0.05)
        lifted.no_expiry()
        await anyio.sleep(0.1)
    assert not lifted.expired
    await anyio.sleep(0.01)


async def test_an_outer_cancellation_at_the_same_moment_is_not_swallowed() -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.05) as outer:
        async with CancelOnDisconnect(stays) as watch:
            watch.expire_after(0.05)
            await anyio.sleep(5)
        await anyio.sleep(5)  # whichever landed first, the outer scope's cancellation reaches here
    assert outer.cancelled_caught and time.monotonic() - started < 2


async def test_an_error_in_the_block_propagates() -> None:
    with pytest.raises(ZeroDivisionError):
        async with CancelOnDisconnect(stays):
            await anyio.lowlevel.checkpoint()
            raise ZeroDivisionError


async def test_a_deadline_ends_its_block_only() -> None:
    started = time.monotonic()
    with Deadline(0.05) as limit:
        await anyio.sleep(5)
    assert limit.expired and time.monotonic() - started < 1
    with anyio.fail_after(1):
        await anyio.sleep(0.01)  # nothing left pending
    with Deadline(math.inf) as never:
        await anyio.sleep(0.01)
    assert not never.expired


async def test_nested_deadlines_the_outer_one_wins_when_both_pass() -> None:
    started = time.monotonic()
    with Deadline(0.05) as outer:
        async with CancelOnDisconnect(stays) as watch:
            watch.expire_after(0.05)
            with Deadline(0.05):
                await anyio.sleep(5)
        await anyio.sleep(5)  # if an inner one took the cancellation, the outer one's timer still ends this
    assert outer.expired and time.monotonic() - started < 2


async def test_an_anyio_scope_outside_a_deadline_keeps_its_cancellation() -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.05) as scope:
        with Deadline(0.05):
            await anyio.sleep(5)
        await anyio.sleep(5)
    assert scope.cancelled_caught and time.monotonic() - started < 2


async def test_an_anyio_scope_inside_a_deadline_lets_it_through() -> None:
    with Deadline(0.05) as limit:
        with anyio.move_on_after(10) as inside:
            await anyio.sleep(5)
        raise AssertionError("the deadline's cancellation was swallowed inside")
    assert limit.expired and not inside.cancelled_caught
