"""create_app() mounted under a prefix inside another Starlette app, against the real fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from megagate.app import create_app
from megagate.config import config_from_mapping
from tests.conftest import FakeControl, Process, RedisServer
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def host_app(
    fake_upstream: Process, redis_server: RedisServer, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Any]:
    """A host app mounting megagate; Mount runs no sub-app lifespan, so the host runs the gateway's resources in
    its own (`gateway.running()`: the Redis client and lease renewal when the pool is shared)."""
    pool = {"store": "redis", "redis_url": redis_server.url, "prefix": "mount"} if request.param == "redis" else {}
    usage = {"path": str(tmp_path / "usage.db")}  # the ledger, as the embedding app would keep it
    upstreams = [{"name": "fake", "base_url": fake_upstream.url, "keys": ["sk-mount-key"]}]
    config = config_from_mapping({"pool": pool, "usage": usage, "upstreams": upstreams})
    gateway = create_app(config)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("host app")

    async with gateway.running():
        yield Starlette(routes=[Route("/", home), Mount("/llm", app=gateway)])


async def call(app: Any, method: str, path: str, body: bytes = b"") -> Recorder:
    recorder = Recorder()
    await app(http_scope(path, method=method), receiver(body), recorder)
    return recorder


async def test_chat_completion_through_the_mount(host_app: Any, fake: FakeControl) -> None:
    app = host_app
    body = b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
    result = await call(app, "POST", "/llm/v1/chat/completions", body)
    assert result.status == 200 and result.header(
        b"content-type",
    ).startswith(b"text/event-stream")  # type: ignore[union-attr]
    assert result.body.endswith(b"data: [DONE]\n\n")
    seen = fake.requests()[-1]
    assert seen["path"] == "/v1/chat/completions" and seen["key"] == "sk-mount-key"
    assert seen["body"]["model"] == "openai-gpt-oss-120b"


async def test_models_and_errors_through_the_mount(host_app: Any) -> None:
    app = host_app
    models = await call(app, "GET", "/llm/v1/models")
    assert models.status == 200 and "gpt-4" in [m["id"] for m in models.json()["data"]]
    bad = await call(app, "POST", "/llm/v1/chat/completions", b"{")
    assert bad.status == 400 and msgspec.json.decode(bad.body)["error"]["type"] == "invalid_request_error"
    assert (await call(app, "GET", "/")).body == b"host app"
