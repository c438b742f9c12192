"""`Deadline`: a block that is cancelled after some seconds, as `anyio.move_on_after`, at a fraction of its cost.

Every request passes through three time limits (the body's arrival, the request deadline, the first event of a
stream) and each was an anyio cancel scope with a deadline: created, entered and left, about 10 µs each on this
machine (`current_task` and backend lookups, the timer), several percent of a plain request's CPU in issue 17's
profile. On asyncio a `Deadline` is one loop timer that cancels the request's task once (`Task.cancel`); leaving
the block takes that request back (`Task.uncancel`) and swallows the CancelledError only when nobody else cancelled
the task too: the rule anyio's own scopes follow for native cancellations, so the two mix (anyio scopes inside
see a native cancellation and let it through). The cancellation can only land inside the block: entering and
leaving it never suspends. On trio (and any other anyio backend) it is `anyio.move_on_after` itself.

`TaskCanceller` is that mechanism on its own, shared with `disconnect.CancelOnDisconnect`.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

import anyio
import sniffio


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
