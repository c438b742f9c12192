"""The metrics middleware in process: counters from the attempt records, in-flight back to zero."""

from __future__ import annotations

import pytest

from megagate.upstream.mock import HANG, MockResponse, sse
from tests.inprocess import CHAT, COMPLETION, call, gateway

pytestmark = pytest.mark.anyio


def sample(app: object, name: str, **labels: str) -> float:
    for metric in app.metrics.registry.collect():  # type: ignore[attr-defined]
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_requests_attempts_tokens_and_in_flight_are_counted() -> None:
    limited = MockResponse(429, body=[b'{"error":{"message":"slow"}}'])
    app, _ = gateway([limited, MockResponse(body=[COMPLETION])])
    await call(app)
    assert sample(app, "megagate_requests_total", route="/v1/chat/completions", status="2xx") == 1
    assert sample(app, "megagate_upstream_attempts_total", outcome="rate_limited") == 1
    assert sample(app, "megagate_upstream_attempts_total", outcome="success") == 1
    assert sample(app, "megagate_tokens_total", kind="prompt") == 3
    assert sample(app, "megagate_in_flight", kind="request") == 0


async def test_a_local_token_count_is_counted_as_local() -> None:
    app, transport = gateway([])
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "count me"}]}
    result = await call(app, "/v1/messages/count_tokens", body)
    assert result.json()["input_tokens"] > 0 and transport.requests == []
    assert sample(app, "megagate_local_answers_total", reason="no_upstream") == 1


async def test_a_cancelled_stream_leaves_nothing_in_flight() -> None:
    import anyio

    app, _ = gateway([sse(b'data: {"choices":[]}\n\n', HANG)])
    with anyio.move_on_after(0.05):
        await call(app, body={**CHAT, "stream": True})
    assert sample(app, "megagate_in_flight", kind="request") == 0
    assert sample(app, "megagate_in_flight", kind="stream") == 0


async def test_in_flight_counts_a_waiting_stream_and_never_the_scrape() -> None:
    import anyio

    app, _ = gateway([sse(HANG)])
    async with anyio.create_task_group() as group:
        group.start_soon(call, app, "/v1/chat/completions", {**CHAT, "stream": True})
        await anyio.sleep(0.05)  # the stream waits for its first event
        scrape = await call(app, "/metrics", method="GET")
        group.cancel_scope.cancel()
    text = scrape.body.decode()
    assert 'megagate_in_flight{kind="request"} 1.0' in text and 'megagate_in_flight{kind="stream"} 1.0' in text


async def test_a_stream_failing_after_its_start_is_counted() -> None:
    from megagate.core.errors import UpstreamProtocolError

    chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\n'
    app, _ = gateway([sse(chunk, UpstreamProtocolError("reset"))])
    await call(app, body={**CHAT, "stream": True})
    assert sample(app, "megagate_stream_failures_total", route="/v1/chat/completions") == 1
