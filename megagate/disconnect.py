"""`CancelOnDisconnect`: run a piece of work that is cancelled the moment the client disconnects.

ASGI servers (hypercorn among them) do not cancel an app when its client leaves; they only deliver
`http.disconnect` to `receive`. So something must wait on `receive` while the work runs, or an abandoned request
keeps its upstream call and its key slot until the upstream finishes.

On asyncio the watcher is a bare `loop.create_task`: an anyio task group per request (enter, spawn, cancel, exit)
measured about a third of megagate's own CPU per plain request (issue 4's profile). On trio it is a nursery, as
structured concurrency wants. Either way the work runs in an anyio cancel scope the watcher cancels.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
import anyio.abc
import sniffio

from megagate.asgi import Receive


class CancelOnDisconnect:
    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.scope = anyio.CancelScope()  # the work's scope; its owner may also give it a deadline
        self.disconnected = False  # the client left (else a cancellation of the scope was its deadline)
        self._task: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None

    async def _watch(self) -> None:
        try:
            while (await self.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 -- a server that breaks receive: nothing left to watch
            return
        self.disconnected = True
        self.scope.cancel()

    async def __aenter__(self) -> anyio.CancelScope:
        if sniffio.current_async_library() == "asyncio":
            self._task = asyncio.get_running_loop().create_task(self._watch())
        else:
            self._group = anyio.create_task_group()
            await self._group.__aenter__()
            self._group.start_soon(self._watch)
        return self.scope.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        suppressed = bool(self.scope.__exit__(exc_type, exc, tb))  # swallows only its own (disconnect) cancellation
        if self._task is not None:
            self._task.cancel()
        elif self._group is not None:
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)  # the work's error, if any, propagates unwrapped
        return suppressed
