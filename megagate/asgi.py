"""Small ASGI helpers shared by the middlewares and the endpoints: typing, body reading and replay, JSON responses,
headers, and the one observer of what a client is sent (`ResponseObserver`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from megagate.core.errors import ClientDisconnected, Format, MegagateError, PayloadTooLarge, error_headers, render_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Clock = Callable[[], float]  # the shell reads time through one of these, so tests pass it in by hand


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client left before its request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A fresh `receive` for one attempt at a request whose body was already read: it delivers `body` whole, then
    what the real `receive` says next, skipping request-body messages (an outer replay's), so the app sees exactly
    what ASGI promises: the body, then `http.disconnect` when the client leaves. Rotation, fallback and hedging
    give one to every attempt, so an app that reads its body works on the second key too."""
    delivered = False

    async def receive_replayed() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message

    return receive_replayed


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = list(headers) if headers else [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: MegagateError, fmt: Format = "openai") -> None:
    await send_json(send, error.status, render_error(error, fmt), error_headers(error))


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def presented_key(scope: Scope) -> bytes | None:
    """The client key of a request: a Bearer token, else `x-api-key` (Anthropic's SDKs), else None."""
    authorization = header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    return header(scope, b"x-api-key")


OBSERVER = "megagate.response"
HeaderHook = Callable[[Headers], Headers]  # the start's headers in, the headers to send out


@dataclass(slots=True)
class ResponseObserver:
    """One observer of what a request's client is sent, shared by every layer that needs to know.

    Metrics, the access log, tracing, the error renderer and fallback each need a fact about the response (its
    status, when its first body byte left) or add a header to its start. Each wrapping `send` for that put four or
    five extra coroutine calls on every streamed event. Instead the first megagate layer to run wraps `send` once
    (`observe_response`) and keeps the observer in the scope; the layers inside find it there and pass `send` on
    untouched. After the first body byte the wrapper does one attribute check per event. A header a layer adds
    (`adding_headers`) is added only to a response started while that layer's own call runs, as when it wrapped
    `send` itself, so an error rendered by a layer further out does not get it."""

    clock: Clock
    status: int = 0  # 0 until the response has started
    first_byte: float | None = None  # `clock()` when the first non-empty body went out
    hooks: list[HeaderHook] = field(default_factory=list)  # innermost last

    @property
    def started(self) -> bool:
        return self.status != 0

    def adding_headers(self, hook: HeaderHook) -> _Adding:
        """`with observer.adding_headers(hook):` a response that starts while the block runs gets `hook`'s headers."""
        return _Adding(self.hooks, hook)

    def _start(self, message: Message) -> Message:
        self.status = message["status"]
        if not self.hooks:
            return message
        headers: Headers = list(message.get("headers", ()))
        for hook in reversed(self.hooks):  # innermost first, as nested wrappers would have added them
            headers = hook(headers)
        return {**message, "headers": headers}


def observe_response(scope: Scope, send: Send, clock: Clock = time.monotonic) -> tuple[ResponseObserver, Send]:
    """The request's observer and the `send` to pass inward: a wrapped one if this layer installed the observer,
    else `send` itself (an outer layer's wrapper already observes)."""
    observer: ResponseObserver | None = scope.get(OBSERVER)
    if observer is not None:
        return observer, send
    observer = scope[OBSERVER] = ResponseObserver(clock)

    async def observed(message: Message) -> None:
        if observer.first_byte is None:  # past the first byte there is nothing left to observe: one check per event
            if message["type"] == "http.response.start":
                message = observer._start(message)
            elif message.get("body"):
                observer.first_byte = observer.clock()
        await send(message)

    return observer, observed


class _Adding:
    """The context of `ResponseObserver.adding_headers` (a class: a generator context manager costs microseconds)."""

    __slots__ = ("hook", "hooks")

    def __init__(self, hooks: list[HeaderHook], hook: HeaderHook) -> None:
        self.hooks = hooks
        self.hook = hook

    def __enter__(self) -> None:
        self.hooks.append(self.hook)

    def __exit__(self, *exc_info: object) -> None:
        self.hooks.remove(self.hook)
