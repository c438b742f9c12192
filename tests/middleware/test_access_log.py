"""The access log in process: one JSON line per request with what was tried, and never a secret."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec
import pytest

from megagate.upstream.mock import MockResponse
from tests.inprocess import COMPLETION, KEYS, call, gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The access logger does not propagate (it has its own stderr handler): capture it at the source."""
    logger = logging.getLogger("megagate.access")
    propagate, logger.propagate = logger.propagate, False  # so each line is captured once
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


async def test_one_line_per_request_with_attempts_tokens_and_no_secret(access: pytest.LogCaptureFixture) -> None:
    limited = MockResponse(429, body=[b'{"error":{"message":"slow"}}'])
    app, _ = gateway([limited, MockResponse(body=[COMPLETION])], access_log=True)
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"req-123")]
    with access.at_level(logging.INFO, logger="megagate.access"):
        result = await call(app, headers=headers)
    assert result.header(b"x-request-id") == b"req-123"
    lines = [msgspec.json.decode(r.getMessage()) for r in access.records if r.name == "megagate.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "req-123" and line["status"] == 200 and line["attempts"] == 2
    assert len(line["keys"]) == 2 and all(k.startswith("key-") for k in line["keys"])
    assert line["prompt_tokens"] == 3 and line["completion_tokens"] == 1
    assert all(key not in access.text for key in KEYS) and "hi" not in line.values()


async def test_an_insane_request_id_is_replaced(access: pytest.LogCaptureFixture) -> None:
    app, transport = gateway([MockResponse(body=[COMPLETION])], access_log=True)
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"bad id\x7f" * 30)]
    with access.at_level(logging.INFO, logger="megagate.access"):
        result = await call(app, headers=headers)
    given = result.header(b"x-request-id")
    assert given is not None and len(given) == 32 and transport.requests[0].header(b"x-request-id") == given


async def test_a_stream_that_broke_after_it_started_is_logged_as_failed(access: pytest.LogCaptureFixture) -> None:
    from megagate.core.errors import UpstreamProtocolError
    from megagate.upstream.mock import sse
    from tests.inprocess import CHAT

    chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\n'
    app, _ = gateway([sse(chunk, UpstreamProtocolError("the upstream reset the connection"))], access_log=True)
    with access.at_level(logging.INFO, logger="megagate.access"):
        result = await call(app, body={**CHAT, "stream": True})
    line = msgspec.json.decode(access.records[-1].getMessage())
    assert result.status == 200 and line["status"] == 200
    assert line["outcome"] == "failed_after_start" and "reset" in line["error"]


async def test_log_format_text_is_one_short_human_line(access: pytest.LogCaptureFixture) -> None:
    app, _ = gateway([MockResponse(body=[COMPLETION])], access_log=True, log_format="text")
    with access.at_level(logging.INFO, logger="megagate.access"):
        await call(app)
    assert access.records[-1].getMessage().startswith("POST /v1/chat/completions 200 gpt-4 1 attempt ")
