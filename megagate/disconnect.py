"""`CancelOnDisconnect`: run a piece of work that is cancelled the moment the client disconnects, or at a deadline.

ASGI servers (hypercorn among them) do not cancel an app when its client leaves; they only deliver
`http.disconnect` to `receive`. So something must wait on `receive` while the work runs, or an abandoned request
keeps its upstream call and its key slot until the upstream finishes. The same watch carries the work's deadline
(the proxy's first-byte timeout), so one request needs one of these and nothing else.

On trio (and any other anyio backend) the watcher is a nursery task and the work runs in an anyio cancel scope.
On asyncio both were measured too dear for every request: an anyio task group per request cost about a third of
megagate's own CPU per plain request (issue 4), and the anyio cancel scope with its deadline, entered and left,
about 6 % of the worker's CPU per plain request (issue 17's profile: `current_task` and backend lookups in
`CancelScope.__new__/__enter__/__exit__`). There the watcher is a bare `loop.create_task`, and a disconnect or the
deadline cancels the request's own task once, settled when the block ends (`deadline.TaskCanceller`).
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

import anyio
import anyio.abc

from megagate.asgi import Receive
from megagate.deadline import TaskCanceller, on_asyncio


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
