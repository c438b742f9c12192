"""Traces with `[tracing]` configured to the console exporter: a request that falls back shows its server span
and one span per attempt with its outcome, and the trace context goes upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from megagate.upstream.mock import MockRequest, MockResponse
from tests.inprocess import COMPLETION, call, gateway

pytestmark = pytest.mark.anyio


def spans_of(output: str) -> list[dict[str, Any]]:
    """The console exporter prints each span as an indented JSON object."""
    decoder, spans, at = json.JSONDecoder(), [], output.find("{")
    while at != -1:
        span, end = decoder.raw_decode(output, at)
        spans.append(span)
        at = output.find("{", end)
    return spans


async def test_a_fallback_shows_a_server_span_and_an_attempt_span_each(capfd: pytest.CaptureFixture[str]) -> None:
    def answer(request: MockRequest) -> MockResponse:
        if b'"model":"a"' in request.body:
            return MockResponse(500, body=[b'{"error":{"message":"down"}}'])
        return MockResponse(body=[COMPLETION])

    app, transport = gateway(answer, keys=["sk-mega-trace-key-0001"], tracing={"exporter": "console"},
                             fallbacks={"a": ["b"]})  # fmt: skip
    result = await call(app, body={"model": "a", "messages": [{"role": "user", "content": "hi"}]})
    await app.aclose()
    assert result.status == 200
    spans = spans_of(capfd.readouterr().out)
    server = next(s for s in spans if s["kind"] == "SpanKind.SERVER")
    attempts = [s for s in spans if s["kind"] == "SpanKind.CLIENT"]
    assert server["name"] == "POST /v1/chat/completions"
    assert server["attributes"]["gen_ai.request.model"] == "a" and server["attributes"]["gen_ai.response.model"] == "b"
    assert [(s["attributes"]["gen_ai.request.model"], s["attributes"]["megagate.outcome"]) for s in attempts] == [
        ("a", "server_error"), ("b", "success")]  # fmt: skip
    assert all(s["parent_id"] == server["context"]["span_id"] for s in attempts)
    trace_id = server["context"]["trace_id"].removeprefix("0x")
    assert all(trace_id in (r.header(b"traceparent") or b"").decode() for r in transport.requests)
    assert "sk-mega-trace-key-0001" not in json.dumps(spans)


async def test_without_tracing_there_is_no_tracing_layer() -> None:
    app, _ = gateway([MockResponse(body=[COMPLETION])])
    layers, inner = [], app.app
    while hasattr(inner, "app"):  # every middleware keeps the app it wraps as `.app`, down to the router
        layers.append(type(inner).__name__)
        inner = inner.app
    assert app.tracing is None and layers[0] == "MetricsMiddleware" and "RotationMiddleware" in layers
    assert "TracingMiddleware" not in layers
