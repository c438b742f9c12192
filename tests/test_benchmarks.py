"""The in-process benchmarks measure what they say: every variant of `benchmarks.stack` serves the whole answer,
and `benchmarks.responses_stream` relays a whole Responses stream over both upstream formats. A variant that
breaks (a layer left out that another relies on) would otherwise divide by zero or time an error."""

from __future__ import annotations

import msgspec
import pytest

from benchmarks import responses_stream, stack

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("without", [set(), *({layer} for layer in stack.LAYERS), set(stack.LAYERS)], ids=str)
async def test_every_stack_variant_serves_plain_and_streamed_answers(without: set[str]) -> None:
    app = stack.build(without)
    assert await stack.one(app, msgspec.json.encode(stack.REQUEST)) == 2  # start + body
    streamed = await stack.one(app, msgspec.json.encode({**stack.REQUEST, "stream": True}))
    # one body message per upstream event, no coalescing across reads; the usage chunk is megagate's own (the
    # client did not ask for include_usage), so it is counted and not sent
    assert streamed == 2 + len(stack.EVENTS) - 1


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_the_responses_benchmark_relays_a_whole_responses_stream(fmt: str) -> None:
    app = responses_stream.build(fmt)
    bodies: list[bytes] = []
    await stack.one(app, responses_stream.BODY, "/v1/responses", bodies)
    text = b"".join(bodies)
    assert text.count(b"event: response.output_text.delta") == responses_stream.WORDS
    assert b"event: response.completed" in text and b"event: response.failed" not in text
