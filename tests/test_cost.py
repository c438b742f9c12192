"""What a request cost, where an operator and a client see it: the `x-megagate-cost-usd` header of a whole answer,
the access log's `cost_usd`, `megagate_cost_usd_total`; an unpriced model's cost is null and counted as such."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest

from megagate.upstream.mock import MockResponse
from tests.inprocess import CHAT, call, gateway

pytestmark = pytest.mark.anyio
CACHED = msgspec.json.encode({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1100, "completion_tokens": 10, "total_tokens": 1110,
              "prompt_tokens_details": {"cached_tokens": 1000}},
})  # fmt: skip
PRICES = {"gpt-4*": {"input": 2.0, "output": 8.0, "cache_read": 0.5}}
EXPECTED = (100 * 2.0 + 1000 * 0.5 + 10 * 8.0) / 1e6


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("megagate.access")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


async def test_a_priced_answer_says_its_cost_in_the_header_the_log_and_the_metrics(
    access: pytest.LogCaptureFixture,
) -> None:
    app, _ = gateway(lambda _: MockResponse(body=[CACHED]), access_log=True, prices=PRICES)
    with access.at_level(logging.INFO, logger="megagate.access"):
        answer = await call(app)
    assert answer.status == 200 and float(answer.header(b"x-megagate-cost-usd") or 0) == pytest.approx(EXPECTED)
    line = [msgspec.json.decode(r.getMessage()) for r in access.records if r.name == "megagate.access"][-1]
    assert line["cost_usd"] == pytest.approx(EXPECTED) and line["cache_read_tokens"] == 1000
    scrape = (await call(app, "/metrics", method="GET")).body.decode()
    assert 'megagate_cost_usd_total{client="anonymous",model="gpt-4"}' in scrape


async def test_an_unpriced_model_is_null_and_counted_never_zero(access: pytest.LogCaptureFixture) -> None:
    app, _ = gateway(lambda _: MockResponse(body=[CACHED]), access_log=True, prices={"claude-*": PRICES["gpt-4*"]})
    with access.at_level(logging.INFO, logger="megagate.access"):
        answer = await call(app, body=CHAT)
    assert answer.header(b"x-megagate-cost-usd") is None
    line = [msgspec.json.decode(r.getMessage()) for r in access.records if r.name == "megagate.access"][-1]
    assert line["cost_usd"] is None
    scrape = (await call(app, "/metrics", method="GET")).body.decode()
    assert 'megagate_unpriced_requests_total{model="gpt-4"} 1.0' in scrape


STREAM = [
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4","choices":[],'
    b'"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("asked", [None, {"include_usage": True}, {"include_obfuscation": False}])
async def test_every_stream_is_counted_and_the_client_sees_usage_only_when_it_asked(
    access: pytest.LogCaptureFixture, asked: dict[str, bool] | None
) -> None:
    app, transport = gateway(lambda _: MockResponse(headers=[(b"content-type", b"text/event-stream")], body=STREAM),
                             access_log=True, prices=PRICES)  # fmt: skip
    body = {**CHAT, "stream": True, **({"stream_options": asked} if asked else {})}
    with access.at_level(logging.INFO, logger="megagate.access"):
        answer = await call(app, body=body)
    sent = msgspec.json.decode(transport.requests[-1].body)["stream_options"]
    assert sent == {**(asked or {}), "include_usage": True}  # the client's other options kept
    assert (b'"usage"' in answer.body) == bool(asked and asked.get("include_usage"))
    assert answer.body.endswith(b"data: [DONE]\n\n") and b'"content":"hi"' in answer.body
    line = [msgspec.json.decode(r.getMessage()) for r in access.records if r.name == "megagate.access"][-1]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 1) and line["cost_usd"] > 0


async def test_a_model_without_a_configured_price_takes_the_upstream_lists() -> None:
    """MegaLLM's model list gives `pricing` per model: with `upstream_prices = true` the gateway asks for it at
    start-up; `[prices]` still wins where it names a model, and another currency is not converted."""

    def pricing(given: float, produced: float, currency: str) -> dict[str, Any]:
        return {"input_tokens_cost_per_million": given, "output_tokens_cost_per_million": produced,
                "currency": currency}  # fmt: skip

    listed = msgspec.json.encode({"object": "list", "data": [
        {"id": "gpt-4", "object": "model", "pricing": pricing(2.0, 8.0, "USD")},
        {"id": "gpt-4o", "object": "model", "pricing": pricing(9.0, 9.0, "EUR")}]})  # fmt: skip

    def answer(request: Any) -> MockResponse:
        return MockResponse(body=[listed]) if request.target.endswith(b"/models") else MockResponse(body=[CACHED])

    app, _ = gateway(answer, upstream_prices=True)
    async with app.running():
        for _ in range(100):  # the first list is asked for as the gateway starts
            if app.upstream_prices.prices:
                break
            await anyio.sleep(0.01)
        priced = await call(app)
        other = await call(app, body={**CHAT, "model": "gpt-4o"})
    assert float(priced.header(b"x-megagate-cost-usd") or 0) == pytest.approx((1100 * 2.0 + 10 * 8.0) / 1e6)
    assert other.header(b"x-megagate-cost-usd") is None  # EUR: unpriced, not guessed
    models = msgspec.json.decode((await call(app, "/v1/models", method="GET")).body)["data"]
    assert next(m for m in models if m["id"] == "gpt-4")["pricing"]["currency"] == "USD"  # passed on to clients
