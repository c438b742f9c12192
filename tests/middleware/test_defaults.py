"""DefaultsMiddleware works around any ASGI app: the app sees a validated body with defaults filled."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from megagate.middleware.defaults import DefaultsMiddleware
from megagate.state import get_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


class EchoApp:
    """A plain ASGI app that knows nothing of megagate: it echoes the body it receives."""

    def __init__(self) -> None:
        self.calls = 0
        self.scope: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        self.scope = scope
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def call(app: Any, body: bytes, path: str = "/v1/chat/completions", **scope: Any) -> Recorder:
    recorder = Recorder()
    await app(http_scope(path, **scope), receiver(body, chunk=7), recorder)
    return recorder


async def test_app_receives_the_body_with_the_default_model_filled() -> None:
    echo = EchoApp()
    app = DefaultsMiddleware(echo, defaults={"temperature": 0.2})
    result = await call(app, b'{"messages":[{"role":"user","content":"hi"}],"tools":[{"x":1}]}')
    assert result.json() == {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"x": 1}],
        "model": "openai-gpt-oss-120b",
        "temperature": 0.2,
    }
    state = get_state(echo.scope)
    assert state is not None and state.request.model == "openai-gpt-oss-120b"


async def test_alias_is_resolved() -> None:
    echo = EchoApp()
    app = DefaultsMiddleware(echo, aliases={"fast": "llama3.3-70b-instruct"})
    result = await call(app, b'{"model":"fast","messages":[{"role":"user","content":"hi"}]}')
    assert result.json()["model"] == "llama3.3-70b-instruct"


async def test_invalid_request_is_answered_with_an_envelope_and_never_reaches_the_app() -> None:
    echo = EchoApp()
    result = await call(DefaultsMiddleware(echo), b'{"messages":[{"role":"user"}],"top_p":7}')
    assert result.status == 400
    assert result.json()["error"]["param"] == "top_p"
    assert echo.calls == 0


async def test_wrong_content_type_is_400() -> None:
    echo = EchoApp()
    result = await call(DefaultsMiddleware(echo), b"{}", headers=[(b"content-type", b"text/plain")])
    assert result.status == 400 and echo.calls == 0


async def test_oversized_body_is_413() -> None:
    result = await call(DefaultsMiddleware(EchoApp(), max_body_bytes=10), b'{"messages": [{"role": "user"}]}')
    assert result.status == 413 and result.json()["error"]["type"] == "invalid_request_error"


async def test_other_paths_and_methods_pass_through_untouched() -> None:
    echo = EchoApp()
    app = DefaultsMiddleware(echo)
    assert (await call(app, b"not json", path="/other")).body == b"not json"
    assert (await call(app, b"", method="GET")).status == 200
    assert echo.calls == 2


async def test_path_is_matched_below_a_mount_point() -> None:
    echo = EchoApp()
    result = await call(
        DefaultsMiddleware(echo), b'{"messages":[{"role":"user"}]}', path="/llm/v1/chat/completions", root_path="/llm"
    )
    assert msgspec.json.decode(result.body)["model"] == "openai-gpt-oss-120b"


async def test_anthropic_route_errors_use_the_anthropic_envelope() -> None:
    app = DefaultsMiddleware(EchoApp())
    result = await call(app, b"{", path="/v1/messages")
    assert result.status == 400
    assert result.json()["type"] == "error" and result.json()["error"]["type"] == "invalid_request_error"
