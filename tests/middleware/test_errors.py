"""ErrorsMiddleware renders megagate's errors and hides everything else behind a 500 envelope."""

from __future__ import annotations

from typing import Any

import pytest

from megagate.core.errors import RateLimited
from megagate.middleware.errors import ErrorsMiddleware
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


async def raising(exc: Exception) -> Recorder:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise exc

    recorder = Recorder()
    await ErrorsMiddleware(app)(http_scope("/v1/chat/completions"), receiver(b""), recorder)
    return recorder


async def test_megagate_error_keeps_status_type_and_retry_after() -> None:
    result = await raising(RateLimited("slow down", retry_after=1.2))
    assert result.status == 429
    assert result.header(b"retry-after") == b"2"
    assert result.json()["error"] == {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}


async def test_unexpected_error_is_a_500_envelope_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    result = await raising(ZeroDivisionError("secret detail"))
    assert result.status == 500
    assert b"secret detail" not in result.body and b"Traceback" not in result.body
    assert "ZeroDivisionError" in caplog.text
