"""A serving worker leaves when the process that started it is gone.

hypercorn's `-w N` parent starts each worker with multiprocessing's spawn; SIGKILL the parent (the OOM killer, a
container runtime's hard stop) and the workers live on, reparented to PID 1, still accepting on the port, so the
supervisor's restart fails with "Address already in use". Each worker therefore waits on its parent's sentinel: the
read end of a pipe whose write end only the parent holds, readable (EOF) the moment the parent exits, however it
died. That is multiprocessing's own `parent_process().is_alive()`, made a wait: no poll, no timer, nothing per
request. It is preferred over `prctl(PR_SET_PDEATHSIG)` because that fires when the parent *thread* that forked
exits, is Linux-only, races with a parent that died before the call, and delivers a signal that hypercorn's workers
do not handle (SIGTERM's default kills at once, cutting streams).

The worker then leaves the way hypercorn's own shutdown does: stop accepting, let requests in flight finish within
`graceful_timeout` (streams release their pool leases as they end), run the lifespan shutdown, exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import anyio

logger = logging.getLogger("megagate")


def serving_parent() -> BaseProcess | None:
    """The process that started this one with multiprocessing (hypercorn's parent under `-w N`), or None when this
    process was started directly (hypercorn with `workers = 0`, an embedding application's own process)."""
    return multiprocessing.parent_process()


async def leave_with(parent: BaseProcess, shut_down: Callable[[], None] | None = None) -> None:
    """Once `parent` has exited, ask this worker to shut down gracefully (`shut_down`: how; tests pass their own)."""
    await anyio.wait_readable(parent.sentinel)
    logger.warning(
        "megagate: the parent process (pid %s) is gone: this worker (pid %s) stops accepting, lets requests in "
        "flight finish and exits", parent.pid, os.getpid()
    )  # fmt: skip
    (shut_down or ask_to_shut_down)()


def hypercorn_shutdown_event() -> Any:
    """The event hypercorn's parent passed this worker, set to shut it down (None outside a hypercorn worker).
    The one hypercorn-specific touch: multiprocessing keeps a spawned process's arguments on
    `current_process()._kwargs`."""
    arguments: dict[str, Any] = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = arguments.get("shutdown_event")
    return event if event is not None and callable(getattr(event, "set", None)) else None


def ask_to_shut_down() -> None:
    """Shut this worker down gracefully: hypercorn's workers leave when their event is set (they ignore SIGINT and
    die at once on SIGTERM, so a signal would not do); setting it is what the parent itself does on SIGTERM, and
    its siblings, orphaned too, leave as well. Any other multiprocessing parent's worker gets SIGTERM, the
    conventional request to shut down gracefully (uvicorn's workers handle it so)."""
    event = hypercorn_shutdown_event()
    if event is not None:
        event.set()
    else:
        os.kill(os.getpid(), signal.SIGTERM)


async def finish_on_sigterm() -> None:
    """SIGTERM asks this worker to shut down the graceful way instead of killing it. hypercorn's parent stops its
    workers with an event, then SIGTERMs whichever is still finishing (its streams, the usage ledger's last rows),
    which by default dies at once; the parent then waits for it to exit anyway (multiprocessing joins its
    children), so finishing costs nothing but the rows it would have lost. A supervisor's SIGKILL still kills."""
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            logger.info("megagate: SIGTERM: this worker (pid %s) finishes what is in flight, then exits", os.getpid())
            ask_to_shut_down()
