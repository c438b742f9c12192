"""The official anthropic SDK against megagate (and the openai SDK across formats), with the fake upstream serving
an Anthropic-only, an OpenAI-only and a two-format upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from megagate.fake import WORDS
from tests.conftest import GATEWAY_KEYS, FakeControl, Process, start_gateway

pytestmark = pytest.mark.anyio

FAKE_TEXT = " ".join(WORDS)
CLIENT_KEY = "sk-ant-client-key-never-forwarded"
ANTHROPIC_ONLY_KEY, OPENAI_ONLY_KEY = "sk-mega-anthropic-only-1111", "sk-mega-openai-only-2222"
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }
]


@pytest.fixture(scope="module")
def formats_gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    url = fake_upstream.url
    config = f"""
[[upstreams]]
name = "anthropic-only"
base_url = "{url}"
format = "anthropic"
models = ["claude-only-*"]
keys = ["{ANTHROPIC_ONLY_KEY}"]

[[upstreams]]
name = "openai-only"
base_url = "{url}/v1"
format = "openai"
models = ["gpt-*"]
keys = ["{OPENAI_ONLY_KEY}"]

[[upstreams]]
name = "megallm"
base_url = "{url}"
format = "both"
models = ["claude-opus-*"]
keys = {json.dumps(GATEWAY_KEYS)}
"""
    process = start_gateway(tmp_path_factory.mktemp("formats"), config)
    yield process
    process.stop()


def claude(gateway: Process) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)


def gpt(gateway: Process) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


async def test_message_and_stream_relayed_with_a_pool_key(formats_gateway: Process, fake: FakeControl) -> None:
    async with claude(formats_gateway) as client:
        message = await client.messages.create(
            model="claude-opus-4-1-20250805", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == FAKE_TEXT
        assert message.stop_reason == "end_turn" and message.usage.output_tokens == len(WORDS)
        async with client.messages.stream(
            model="claude-opus-4-1-20250805", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            streamed = "".join([text async for text in stream.text_stream])
            final = await stream.get_final_message()
    assert streamed == FAKE_TEXT and final.usage.output_tokens == len(WORDS)
    for seen in fake.requests():
        assert seen["path"] == "/v1/messages"
        assert seen["headers"]["x-api-key"] in GATEWAY_KEYS and "authorization" not in seen["headers"]
        assert seen["headers"]["anthropic-version"]  # the SDK's own version, passed on
        assert CLIENT_KEY not in json.dumps(seen)


async def tool_round_trip(client: anthropic.AsyncAnthropic, model: str, *, stream: bool) -> list[Any]:
    """Ask with a tool, get a tool_use, answer it with a tool_result, get text. Returns the two answers."""
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    answers = []
    for _ in range(2):
        if stream:
            async with client.messages.stream(model=model, max_tokens=200, tools=TOOLS, messages=messages) as s:
                answer = await s.get_final_message()
        else:
            answer = await client.messages.create(model=model, max_tokens=200, tools=TOOLS, messages=messages)
        answers.append(answer)
        if answer.stop_reason != "tool_use":
            break
        use = next(block for block in answer.content if block.type == "tool_use")
        messages += [
            {"role": "assistant", "content": [block.model_dump() for block in answer.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 °C, sunny"}]},
        ]
    return answers


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model", ["claude-opus-4-1-20250805", "gpt-4o"], ids=["anthropic-upstream", "openai-upstream"])
async def test_tool_use_round_trip(formats_gateway: Process, fake: FakeControl, model: str, stream: bool) -> None:
    async with claude(formats_gateway) as client:
        first, second = await tool_round_trip(client, model, stream=stream)
    use = first.content[-1]
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"location": "Paris", "unit": "celsius"}
    assert second.stop_reason == "end_turn" and second.content[0].text == FAKE_TEXT
    assert second.usage.output_tokens == len(WORDS) and second.usage.input_tokens > 0
    paths = {r["path"] for r in fake.requests()}
    assert paths == ({"/v1/chat/completions"} if model.startswith("gpt") else {"/v1/messages"})


async def test_anthropic_client_reaches_an_openai_only_upstream(formats_gateway: Process, fake: FakeControl) -> None:
    async with claude(formats_gateway) as client:
        message = await client.messages.create(
            model="gpt-4o", max_tokens=50, system="be brief", messages=[{"role": "user", "content": "hi"}]
        )
        async with client.messages.stream(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            streamed = "".join([text async for text in stream.text_stream])
            final = await stream.get_final_message()
    assert message.content[0].text == FAKE_TEXT and message.model == "gpt-4o" and message.stop_reason == "end_turn"
    assert streamed == FAKE_TEXT and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(WORDS) and final.usage.input_tokens > 0
    seen = fake.requests()
    assert {r["path"] for r in seen} == {"/v1/chat/completions"}
    assert {r["key"] for r in seen} == {OPENAI_ONLY_KEY}
    assert seen[0]["body"]["messages"][0] == {"role": "system", "content": "be brief"}


async def test_openai_client_reaches_an_anthropic_only_upstream(formats_gateway: Process, fake: FakeControl) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
    async with gpt(formats_gateway) as client:
        completion = await client.chat.completions.create(
            model="claude-only-sonnet", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == FAKE_TEXT and completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == len(WORDS)
        stream = await client.chat.completions.create(
            model="claude-only-sonnet",
            messages=[{"role": "user", "content": "weather?"}],
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
        )
        arguments, finish, usage = "", None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    arguments += call.function.arguments or "" if call.function else ""
                finish = choice.finish_reason or finish
    assert json.loads(arguments) == {"location": "Paris", "unit": "celsius"} and finish == "tool_calls"
    assert usage is not None and usage.prompt_tokens > 0
    seen = fake.requests()
    assert {r["path"] for r in seen} == {"/v1/messages"} and {r["key"] for r in seen} == {ANTHROPIC_ONLY_KEY}
    assert seen[0]["body"]["max_tokens"] > 0  # Anthropic requires it; the OpenAI client sent none


async def test_cached_and_reasoning_tokens_are_counted_and_carried_in_every_direction(
    formats_gateway: Process, fake: FakeControl
) -> None:
    """An upstream that reports prompt caching: streamed Anthropic answers count message_start's input and cache
    tokens (at 88498a3 they counted 0 input tokens), and each translation keeps the cache reads."""
    fake.add_rule({"caching": {"read": 1000, "write": 50, "reasoning": 20}})
    async with (
        claude(formats_gateway) as client,
        client.messages.stream(
            model="claude-only-sonnet",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "cached-1"},
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 1000 and final.usage.cache_creation_input_tokens == 50
    line = formats_gateway.access_line("cached-1")
    assert line["prompt_tokens"] == final.usage.input_tokens + 1050 and line["completion_tokens"] == len(WORDS)
    assert (line["cache_read_tokens"], line["cache_write_tokens"]) == (1000, 50)

    async with gpt(formats_gateway) as client:  # OpenAI client <- Anthropic upstream
        chunks = await client.chat.completions.create(model="claude-only-sonnet", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}],
                                                      stream_options={"include_usage": True})  # fmt: skip
        usage = [c.usage async for c in chunks if c.usage][-1]
        await chunks.close()
    assert usage.prompt_tokens == line["prompt_tokens"] and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1000

    async with (
        claude(formats_gateway) as client,
        client.messages.stream(  # <- OpenAI upstream (no cache writes)
            model="gpt-4o",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "cached-3"},
        ) as stream,
    ):
        final = await stream.get_final_message()
    line = formats_gateway.access_line("cached-3")
    assert final.usage.cache_read_input_tokens == 1000 and final.usage.input_tokens == line["prompt_tokens"] - 1000
    assert line["reasoning_tokens"] == 20


async def test_count_tokens_is_relayed(formats_gateway: Process, fake: FakeControl) -> None:
    async with claude(formats_gateway) as client:
        count = await client.messages.count_tokens(
            model="claude-opus-4-1-20250805", messages=[{"role": "user", "content": "hello there"}]
        )
    assert count.input_tokens > 0 and fake.requests()[-1]["path"] == "/v1/messages/count_tokens"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"model": "claude-x", "max_tokens": 10, "messages": [{"role": ["user"], "content": "hi"}]},
         "messages[0].role"),
        ({"model": "claude-x", "max_tokens": 10, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},
         "temperature"),
        ({"model": "claude-x", "max_tokens": "ten", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ],
)  # fmt: skip
async def test_bad_input_gets_400_in_the_anthropic_envelope(
    formats_gateway: Process, fake: FakeControl, body: dict[str, Any], param: str
) -> None:
    async with claude(formats_gateway) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.post("/v1/messages", body=body, cast_to=object)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and param in error["error"]["message"]
    assert fake.requests() == []


def test_malformed_json_gets_400_in_the_anthropic_envelope(formats_gateway: Process) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        formats_gateway.url + "/v1/messages", data=b'{"model": "claude-x", "messages": [', method="POST"
    )
    request.add_header("content-type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    body = json.loads(caught.value.read())
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


async def test_a_fallback_crosses_formats(formats_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 500}, model="claude-opus-4-1-20250805")
    async with claude(formats_gateway) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-opus-4-1-20250805",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"fallback_models": ["gpt-4o"]},
        )
        message = await raw.parse()
    assert message.model == "gpt-4o" and message.content[0].text == FAKE_TEXT
    assert raw.headers["x-megagate-model"] == "gpt-4o"
    assert [r["path"] for r in fake.requests()][-1] == "/v1/chat/completions"


async def test_the_anthropic_sdk_lists_models_in_its_own_format(formats_gateway: Process) -> None:
    async with claude(formats_gateway) as client:
        page = await client.models.list()
        ids = [model.id async for model in page]
        one = await client.models.retrieve(ids[0])
    assert "claude-opus-4-1-20250805" in ids and one.type == "model" and one.id == ids[0]


async def test_an_overloaded_anthropic_upstream_reaches_the_client_as_529(
    formats_gateway: Process, fake: FakeControl, anyio_backend: str
) -> None:
    model = f"claude-opus-overloaded-{anyio_backend}"  # its keys rest after this: each loop gets its own model
    fake.add_rule({"status": 529, "message": "Overloaded"}, model=model)
    async with claude(formats_gateway) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
