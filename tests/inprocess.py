"""megagate in process over the in-memory transport: a Gateway, a request, what it sent and answered. No socket."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from megagate.app import Gateway, create_app
from megagate.config import config_from_mapping
from megagate.upstream.mock import MockResponse, MockTransport
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

KEYS = ["sk-mega-inproc-aaaa1111", "sk-mega-inproc-bbbb2222"]
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = msgspec.json.encode({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
})  # fmt: skip


def gateway(
    script: list[MockResponse] | Any, *, fmt: str | list[str] = "openai", keys: list[str] = KEYS, **config: Any
) -> tuple[Gateway, MockTransport]:
    transport = MockTransport(script)
    upstream = {"name": "up", "base_url": "http://upstream.test", "format": fmt, "keys": keys}
    # no ledger file in the working directory unless a test asks for one ([usage] path in a tmp dir)
    settings = {"access_log": False, "usage": {"store": "off"}, "upstreams": [upstream], **config}
    return create_app(config_from_mapping(settings, environ={}), transport=transport), transport


async def call(
    app: Gateway,
    path: str = "/v1/chat/completions",
    body: Any = CHAT,
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    within: float = 5.0,
    query: bytes = b"",
) -> Recorder:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    recorder = Recorder()
    scope = http_scope(path, method, headers or [(b"content-type", b"application/json")])
    scope["query_string"] = query
    with anyio.fail_after(within):
        await app(scope, receiver(raw if method == "POST" else b""), recorder)
    return recorder
