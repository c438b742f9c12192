"""A request's time limits and its client's departure, as cancellations of the request's own task.

`Deadline`: a block that is cancelled after some seconds, as `anyio.move_on_after`, at a fraction of its cost.
Every request passes through three time limits (the body's arrival, the request deadline, the first event of a
stream) and each was an anyio cancel scope with a deadline: created, entered and left, about 10 µs each on this
machine (`current_task` and backend lookups, the timer), several percent of a plain request's CPU in issue 17's
profile. On asyncio a `Deadline` is one loop timer that cancels the request's task once (`Task.cancel`); leaving
the block takes that request back (`Task.uncancel`) and swallows the CancelledError only when nobody else cancelled
the task too: the rule anyio's own scopes follow for native cancellations, so the two mix (anyio scopes inside
see a native cancellation and let it through). The cancellation can only land inside the block: entering and
leaving it never suspends. On trio (and any other anyio backend) it is `anyio.move_on_after` itself.

`CancelOnDisconnect`: run a piece of work that is cancelled the moment the client disconnects, or at a deadline.
ASGI servers (hypercorn among them) do not cancel an app when its client leaves; they only deliver
`http.disconnect` to `receive`. So something must wait on `receive` while the work runs, or an abandoned request
keeps its upstream call and its key slot until the upstream finishes. The same watch carries the work's deadline
(the proxy's first-byte timeout), so one request needs one of these and nothing else. On trio the watcher is a
nursery task and the work runs in an anyio cancel scope. On asyncio both were measured too dear for every request:
an anyio task group per request cost about a third of megagate's own CPU per plain request (issue 4), and the anyio
cancel scope with its deadline about 6 % of the worker's CPU (issue 17's profile). There the watcher is a bare
`loop.create_task`, and a disconnect or the deadline cancels the request's own task once (`TaskCanceller`).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

import anyio
import anyio.abc
import sniffio

from megagate.asgi import Receive


class TaskCanceller:
    """Cancel the current asyncio task at most once, and settle it when the block ends."""

    __slots__ = ("_at_enter", "_cancelled", "_task")

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        assert self._task is not None
        self._at_enter = self._task.cancelling()
        self._cancelled = False

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            assert self._task is not None
            self._task.cancel()

    def settle(self, exc: BaseException | None) -> bool:
        """At the end of the block: whether to swallow `exc` (it is our own cancellation, and only ours)."""
        if not self._cancelled:
            return False
        assert self._task is not None
        self._task.uncancel()
        return isinstance(exc, asyncio.CancelledError) and self._task.cancelling() <= self._at_enter


def on_asyncio() -> bool:
    return sniffio.current_async_library() == "asyncio"


class Deadline:
    """`with Deadline(seconds) as limit:` the block is cancelled when `seconds` have passed (`limit.expired`);
    the code after it carries on. `math.inf` sets no timer."""

    __slots__ = ("_canceller", "_scope", "_timer", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._canceller: TaskCanceller | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scope: anyio.CancelScope | None = None

    def _expire(self) -> None:
        self.expired = True
        assert self._canceller is not None
        self._canceller.cancel()

    def __enter__(self) -> Deadline:
        if on_asyncio():
            self._canceller = TaskCanceller()
            if self.seconds != math.inf:
                self._timer = asyncio.get_running_loop().call_later(self.seconds, self._expire)
        else:
            self._scope = anyio.move_on_after(self.seconds)
            self._scope.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._scope is not None:
            suppressed = bool(self._scope.__exit__(exc_type, exc, tb))
            self.expired = self._scope.cancelled_caught
            return suppressed
        if self._timer is not None:
            self._timer.cancel()
        assert self._canceller is not None
        return self._canceller.settle(exc)


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(receive) as watch:` the block is cancelled when the client disconnects
    (`watch.disconnected`) or, after `watch.expire_after(seconds)`, when that time is up (`watch.expired`);
    `watch.no_expiry()` lifts the deadline. Either cancellation ends at the block: the code after it carries on."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.disconnected = False  # the client left
        self.expired = False  # the deadline ended the work
        self._canceller: TaskCanceller | None = None  # asyncio: cancels the request's own task, at most once
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scope: anyio.CancelScope | None = None  # other backends: the work's scope and the watcher's nursery
        self._group: anyio.abc.TaskGroup | None = None

    async def _watch(self) -> None:
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 -- a server that breaks receive: nothing left to watch
            return
        self.disconnected = True
        self._cancel()

    def _cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        elif self._canceller is not None:
            self._canceller.cancel()

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        self._cancel()

    def expire_after(self, seconds: float) -> None:
        if self._scope is not None:
            self._scope.deadline = anyio.current_time() + seconds
        else:
            self.no_expiry()
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def no_expiry(self) -> None:
        if self._scope is not None:
            self._scope.deadline = math.inf
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aenter__(self) -> CancelOnDisconnect:
        if on_asyncio():
            self._canceller = TaskCanceller()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        else:
            self._scope = anyio.CancelScope()
            self._group = anyio.create_task_group()
            await self._group.__aenter__()
            self._group.start_soon(self._watch)
            self._scope.__enter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._scope is not None:
            suppressed = bool(self._scope.__exit__(exc_type, exc, tb))  # swallows only its own cancellation
            self.expired = self._scope.cancelled_caught and not self.disconnected
            assert self._group is not None
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)  # the work's error, if any, propagates unwrapped
            return suppressed
        assert self._watcher is not None and self._canceller is not None
        self._watcher.cancel()
        self.no_expiry()
        return self._canceller.settle(exc)  # ours alone is swallowed; anyone else's goes on
