"""ErrorsMiddleware renders megagate's errors and hides everything else behind a 500 envelope."""

from __future__ import annotations

from typing import Any

import pytest

from megagate.core.errors import MegagateError, RateLimited, UpstreamStatus
from megagate.core.request import RequestDefaults, prepare_chat_request
from megagate.middleware.errors import ErrorsMiddleware
from megagate.routing import ENDPOINTS
from megagate.state import Attempt, RequestState, set_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


async def raising(exc: Exception) -> Recorder:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise exc

    recorder = Recorder()
    try:
        await ErrorsMiddleware(app)(http_scope("/v1/chat/completions"), receiver(b""), recorder)
    except Exception as raised:  # noqa: BLE001 -- a foreign error is rendered, then raised on for the server
        assert raised is exc and not isinstance(exc, MegagateError)
    return recorder


async def test_megagate_error_keeps_status_type_and_retry_after() -> None:
    result = await raising(RateLimited("slow down", retry_after=1.2))
    assert result.status == 429
    assert result.header(b"retry-after") == b"2"
    assert result.json()["error"] == {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}


async def test_unexpected_error_is_a_500_envelope_without_a_traceback_and_raised_on() -> None:
    result = await raising(ZeroDivisionError("secret detail"))
    assert result.status == 500
    assert b"secret detail" not in result.body and b"Traceback" not in result.body


async def test_the_error_is_told_with_attempts_without_rewording_it() -> None:
    """What was tried is added to the message the client reads, never to the raised error itself."""
    error = UpstreamStatus(503, "down")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request = prepare_chat_request(b'{"messages":[{"role":"user","content":"hi"}]}', RequestDefaults())
        endpoint = ENDPOINTS["/v1/chat/completions"]
        set_state(scope, RequestState(endpoint, request, attempts=[Attempt("m", "up", "key-1")]))
        raise error

    recorder = Recorder()
    await ErrorsMiddleware(app)(http_scope("/v1/chat/completions"), receiver(b""), recorder)
    assert recorder.json()["error"]["message"] == "down (tried: m (key-1))"
    assert error.message == "down"
