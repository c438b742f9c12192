"""FallbackMiddleware around a scripted inner app: which failures fall back, what the client is told, deadlines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

from megagate.core.errors import (
    MegagateError,
    NoKeyAvailable,
    NotFound,
    UpstreamConnectError,
    UpstreamStatus,
    UpstreamTimeout,
)
from megagate.core.request import OPENAI_RULES, RequestDefaults, prepare_chat_request
from megagate.core.stream_relay import StreamRelay
from megagate.endpoints.relay import SSE_HEADERS, Relay
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.fallback import FallbackMiddleware
from megagate.middleware.hedging import HedgingMiddleware
from megagate.routing import ENDPOINTS
from megagate.state import Attempt, RequestState, get_state, set_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio
DEFAULTS = RequestDefaults.from_values("a", {}, OPENAI_RULES)


class ScriptedModels:
    """Stands in for rotation + proxy: fails with the error scripted for the request's model, else answers."""

    def __init__(self, failures: dict[str, MegagateError] | None = None, *, stall: set[str] | None = None) -> None:
        self.failures = failures or {}
        self.stall = stall or set()
        self.models: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = get_state(scope)
        assert state is not None
        model = state.request.model
        self.models.append(model)
        self.bodies.append(state.request.encode())
        state.attempts.append(Attempt(model, "up", f"key-0000000{len(state.attempts) + 1}"))
        if model in self.failures:
            raise self.failures[model]
        if model in self.stall:
            await anyio.sleep_forever()
        answer = state.answer = Relay(send)  # the proxy's own answer, as it sends it
        if state.request.stream:
            stream = StreamRelay("openai", "openai", None, lambda data: UpstreamStatus(502, data.decode()))
            await answer.relay(stream, endless(), SSE_HEADERS)
        await answer.plain(200, msgspec.json.encode({"model": model}), [(b"content-type", b"application/json")], None)


async def endless() -> AsyncIterator[bytes]:
    """An upstream stream that sends one event and never ends."""
    yield b"data: {}\n\n"
    await anyio.sleep_forever()


async def call(app: Any, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None, **options: Any):
    stack = ErrorsMiddleware(FallbackMiddleware(app, **options))
    scope = http_scope("/v1/chat/completions", headers=headers)
    state = RequestState(ENDPOINTS["/v1/chat/completions"], prepare_chat_request(msgspec.json.encode(body), DEFAULTS))
    set_state(scope, state)
    recorder = Recorder()
    await stack(scope, receiver(b""), recorder)
    return recorder, state


def ask(model: str = "a", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamStatus(500, "boom"),
        UpstreamStatus(429, "busy", retry_after=3),
        UpstreamTimeout("slow"),
        UpstreamConnectError("refused"),
        NoKeyAvailable("every key cooling", retry_after=2),
        UpstreamStatus(401, "key refused"),
    ],
)
async def test_a_failing_model_falls_back_to_the_next(failure: MegagateError) -> None:
    app = ScriptedModels({"a": failure})
    result, _ = await call(app, ask(fallback_models=["b"]))
    assert result.status == 200 and result.json() == {"model": "b"}
    assert result.header(b"x-megagate-model") == b"b" and result.header(b"x-megagate-attempts") == b"2"
    assert app.models == ["a", "b"]
    assert all(b"fallback" not in body for body in app.bodies)


async def test_the_configured_chain_applies_when_the_request_names_none() -> None:
    app = ScriptedModels({"a": UpstreamStatus(503, "down"), "b": UpstreamStatus(503, "down")})
    result, _ = await call(app, ask(), chains={"a": ["b", "c"]})
    assert result.json() == {"model": "c"} and app.models == ["a", "b", "c"]
    # the request's own list wins over the configured one
    app.models.clear()
    await call(app, ask(fallback_models=["c"]), chains={"a": ["b"]})
    assert app.models == ["a", "c"]


async def test_switches_off_falling_back_on_rate_limits_or_errors() -> None:
    app = ScriptedModels({"a": UpstreamStatus(429, "busy", retry_after=3)})
    result, _ = await call(app, ask(fallback_models=["b"], fallback_on_rate_limit=False))
    assert result.status == 429 and result.header(b"retry-after") == b"3" and app.models == ["a"]
    app = ScriptedModels({"a": UpstreamStatus(500, "boom")})
    result, _ = await call(app, ask(fallback_models=["b"], fallback_on_error=False))
    assert result.status == 502 and app.models == ["a"]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_a_request_error_never_falls_back(status: int) -> None:
    app = ScriptedModels({"a": UpstreamStatus(status, "your fault")})
    result, _ = await call(app, ask(fallback_models=["b"]))
    assert result.status == status and app.models == ["a"]


async def test_when_every_model_fails_the_last_error_lists_what_was_tried() -> None:
    app = ScriptedModels({"a": UpstreamStatus(500, "a down"), "b": UpstreamStatus(429, "b busy", retry_after=7)})
    result, _ = await call(app, ask(fallback_models=["b"]))
    assert result.status == 429 and result.header(b"retry-after") == b"7"
    message = result.json()["error"]["message"]
    assert message.startswith("b busy") and "a (key-00000001)" in message and "b (key-00000002)" in message


async def test_a_fallback_model_no_upstream_serves_is_skipped() -> None:
    app = ScriptedModels({"a": UpstreamStatus(500, "down"), "b": NotFound("no upstream serves b")})
    result, _ = await call(app, ask(fallback_models=["b", "c"]))
    assert result.json() == {"model": "c"}


async def test_the_request_deadline_bounds_every_attempt_together() -> None:
    app = ScriptedModels({"a": UpstreamStatus(500, "down")}, stall={"b"})
    with anyio.fail_after(2):
        result, _ = await call(app, ask(fallback_models=["b"]), timeout=0.2)
    assert result.status == 504 and result.json()["error"]["type"] == "timeout_error"
    # a client may ask for a shorter deadline, never a longer one
    result, _ = await call(ScriptedModels(), ask(), [(b"x-megagate-timeout", b"30")], timeout=0.2)
    assert result.status == 200
    app = ScriptedModels(stall={"a"})
    with anyio.fail_after(2):
        result, _ = await call(app, ask(), [(b"x-megagate-timeout", b"0.1")], timeout=30)
    assert result.status == 504


async def test_the_request_deadline_cuts_through_a_hedged_race() -> None:
    """The deadline cancels the request's task (natively, on asyncio) while it waits on hedging's task groups."""
    app = HedgingMiddleware(ScriptedModels(stall={"a"}), delay=0.05)
    with anyio.fail_after(2):
        result, _ = await call(app, ask(), timeout=0.3)
    assert result.status == 504 and result.json()["error"]["type"] == "timeout_error"


async def test_a_stream_past_its_deadline_ends_with_an_error_event() -> None:
    app = ScriptedModels()
    with anyio.fail_after(2):
        result, _ = await call(app, ask(stream=True), timeout=0.2)
    assert result.status == 200 and result.header(b"x-megagate-model") == b"a"
    assert result.body.startswith(b"data: {}\n\n") and result.body.endswith(b"data: [DONE]\n\n")
    assert b'"type":"timeout_error"' in result.body
    assert result.messages[-1]["more_body"] is False
