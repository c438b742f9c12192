"""One observer of what a request's client is sent, shared by every layer that needs to know.

Metrics, the access log, tracing, the error renderer and fallback each need a fact about the response (its status,
when its first body byte left, whether it has started) or add a header to its start. Each wrapping `send` for that
put four or five extra coroutine calls on every streamed event. Instead the outermost of them wraps `send` once
(`watch_response`) and keeps a `ResponseWatch` in the scope; the layers inside find it there and pass `send` on
untouched. After the first body byte the wrapper does one attribute check per event.

Each layer stays usable alone: whichever megagate layer runs first installs the watch. A header a layer adds
(`ResponseWatch.adding_headers`) is added only to a response started while that layer's own call runs, as when it
wrapped `send` itself, so an error rendered by a layer further out does not get it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from megagate.asgi import Message, Scope, Send
from megagate.upstream import Headers

WATCH = "megagate.response"
HeaderHook = Callable[[Headers], Headers]  # the start's headers in, the headers to send out


@dataclass(slots=True)
class ResponseWatch:
    clock: Callable[[], float]
    status: int = 0  # 0 until the response has started
    first_byte: float | None = None  # `clock()` when the first non-empty body went out
    hooks: list[HeaderHook] = field(default_factory=list)  # innermost last

    @property
    def started(self) -> bool:
        return self.status != 0

    def adding_headers(self, hook: HeaderHook) -> _Adding:
        """`with watch.adding_headers(hook):` a response that starts while the block runs gets `hook`'s headers."""
        return _Adding(self.hooks, hook)

    def _start(self, message: Message) -> Message:
        self.status = message["status"]
        if not self.hooks:
            return message
        headers: Headers = list(message.get("headers", ()))
        for hook in reversed(self.hooks):  # innermost first, as nested wrappers would have added them
            headers = hook(headers)
        return {**message, "headers": headers}


def watch_response(scope: Scope, send: Send, clock: Callable[[], float] = time.monotonic) -> tuple[ResponseWatch, Send]:
    """The request's watch and the `send` to pass inward: a wrapped one if this layer installed the watch, else
    `send` itself (an outer layer's wrapper already watches)."""
    watch: ResponseWatch | None = scope.get(WATCH)
    if watch is not None:
        return watch, send
    watch = scope[WATCH] = ResponseWatch(clock)

    async def watched(message: Message) -> None:
        if watch.first_byte is None:  # past the first byte there is nothing left to watch: one check per event
            if message["type"] == "http.response.start":
                message = watch._start(message)
            elif message.get("body"):
                watch.first_byte = watch.clock()
        await send(message)

    return watch, watched


class _Adding:
    """The context of `ResponseWatch.adding_headers` (a class: a generator context manager costs microseconds)."""

    __slots__ = ("hook", "hooks")

    def __init__(self, hooks: list[HeaderHook], hook: HeaderHook) -> None:
        self.hooks = hooks
        self.hook = hook

    def __enter__(self) -> None:
        self.hooks.append(self.hook)

    def __exit__(self, *exc_info: object) -> None:
        self.hooks.remove(self.hook)
