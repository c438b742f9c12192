"""Calling ASGI apps directly: a request scope, a receive that yields a body, a send that records."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec


def http_scope(
    path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        **extra,
    }


def receiver(body: bytes, *, chunk: int | None = None) -> Any:
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk and body else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()  # as a server does: the next message is a disconnect, when it happens
        raise AssertionError("unreachable")

    return receive


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.messages[0]["headers"]).get(name)
