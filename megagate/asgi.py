"""Small ASGI helpers shared by the middlewares and the proxy: typing, body reading, replay, JSON responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from megagate.core.errors import Format, MegagateError, PayloadTooLarge, error_headers, render_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
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
