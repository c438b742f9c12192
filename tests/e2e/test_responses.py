"""The openai SDK's Responses API (`responses.create` / `responses.stream`) and embeddings through megagate, against
a chat-completions-only and an Anthropic-only fake upstream: megagate translates both ways."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from megagate.fake import WORDS
from tests.conftest import GATEWAY_KEYS, FakeControl, Process, start_gateway

pytestmark = pytest.mark.anyio

FAKE_TEXT = " ".join(WORDS)
TOOLS: Any = [
    {"type": "function", "name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
]  # fmt: skip


@pytest.fixture(scope="module")
def responses_gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    config = f"""
[[upstreams]]
name = "chat-only"
base_url = "{fake_upstream.url}/v1"
format = "openai"
models = ["gpt-*", "text-embedding-*"]
keys = {json.dumps(GATEWAY_KEYS)}

[[upstreams]]
name = "anthropic-only"
base_url = "{fake_upstream.url}"
format = "anthropic"
models = ["claude-*"]
keys = ["sk-mega-anthropic-only-9999"]
"""
    process = start_gateway(tmp_path_factory.mktemp("responses"), config)
    yield process
    process.stop()


def sdk(gateway: Process) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)


@pytest.mark.parametrize("model", ["gpt-5", "claude-opus-4-1"])
async def test_responses_create_answers_text_and_tool_calls(
    responses_gateway: Process, fake: FakeControl, model: str
) -> None:
    async with sdk(responses_gateway) as client:
        response = await client.responses.create(model=model, input="Say something.", instructions="Be brief.")
        assert response.output_text == FAKE_TEXT and response.status == "completed"
        assert response.usage is not None and response.usage.output_tokens == len(WORDS)
        called = await client.responses.create(model=model, input="Weather in Paris?", tools=TOOLS)
    call = called.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris", "unit": "celsius"}
    sent = fake.requests()
    assert sent[0]["path"] == ("/v1/chat/completions" if model.startswith("gpt") else "/v1/messages")
    if model.startswith("gpt"):
        assert sent[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("model", ["gpt-5", "claude-opus-4-1"])
async def test_a_tool_result_reaches_the_upstream_with_its_call_id(
    responses_gateway: Process, fake: FakeControl, model: str
) -> None:
    history: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_42", "name": "get_weather", "arguments": '{"location":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_42", "output": "sunny"},
    ]
    async with sdk(responses_gateway) as client:
        response = await client.responses.create(model=model, input=history, tools=TOOLS)
    assert response.output_text == FAKE_TEXT
    body = fake.requests()[0]["body"]
    if model.startswith("gpt"):
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": "call_42", "content": "sunny"}
        assert body["messages"][-2]["tool_calls"][0]["id"] == "call_42"
    else:
        assert body["messages"][-1]["content"][0] == {"type": "tool_result", "tool_use_id": "call_42",
                                                      "content": "sunny"}  # fmt: skip


@pytest.mark.parametrize("model", ["gpt-5", "claude-opus-4-1"])
async def test_json_schema_becomes_response_format(responses_gateway: Process, fake: FakeControl, model: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    text: Any = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
    async with sdk(responses_gateway) as client:
        response = await client.responses.create(model=model, input="A city.", text=text)
    assert response.output_text == FAKE_TEXT  # what the fake answered, as a Response
    sent = fake.requests()[0]["body"]
    if model.startswith("gpt"):
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "city", "schema": schema,
                                                                                  "strict": True}}  # fmt: skip
    else:  # Anthropic's Messages API has no structured-output field: the request is the messages themselves
        assert "response_format" not in sent and sent["messages"][0]["content"] == "A city."


@pytest.mark.parametrize("model", ["gpt-5", "claude-opus-4-1"])
async def test_responses_stream_text_tool_arguments_and_usage(
    responses_gateway: Process, fake: FakeControl, model: str
) -> None:
    async with sdk(responses_gateway) as client:
        async with client.responses.stream(model=model, input="Say something.") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == FAKE_TEXT and final.output_text == FAKE_TEXT
        assert final.usage is not None and final.usage.output_tokens == len(WORDS) and final.usage.input_tokens > 0
        async with client.responses.stream(model=model, input="Weather?", tools=TOOLS) as stream:
            arguments = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
            final = await stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and json.loads("".join(arguments)) == json.loads(call.arguments)


async def test_a_drop_after_the_first_event_ends_with_response_failed(
    responses_gateway: Process, fake: FakeControl
) -> None:
    fake.add_rule({"drop_after": 3}, model="gpt-5")
    seen: list[str] = []
    async with sdk(responses_gateway) as client:
        stream = await client.responses.create(model="gpt-5", input="Say something.", stream=True)
        async for event in stream:
            seen.append(event.type)
    assert seen[0] == "response.created" and seen[-1] == "response.failed"
    assert seen.count("response.output_text.delta") == 3
    for secret in GATEWAY_KEYS:
        assert secret not in responses_gateway.output()


async def test_previous_response_id_against_a_translating_upstream_is_a_clear_400(
    responses_gateway: Process, fake: FakeControl
) -> None:
    async with sdk(responses_gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model="gpt-5", input="And then?", previous_response_id="resp_123")
    assert "previous_response_id" in caught.value.message and fake.requests() == []


async def test_embeddings_rotate_over_the_keys(responses_gateway: Process, fake: FakeControl) -> None:
    async with sdk(responses_gateway) as client:
        for _ in range(6):
            result = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
            assert len(result.data) == 2 and result.usage.total_tokens > 0
    seen = fake.requests()
    assert {r["path"] for r in seen} == {"/v1/embeddings"}
    assert Counter(r["key"] for r in seen) == {key: 2 for key in GATEWAY_KEYS}
