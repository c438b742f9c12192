"""The official openai SDK against a real hypercorn process running megagate, in front of the fake upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from megagate.fake import WORDS
from tests.conftest import FakeControl, Process

pytestmark = pytest.mark.anyio

FAKE_TEXT = " ".join(WORDS)
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
            "strict": True,
        },
    }
]


def client(gateway: Process) -> openai.AsyncOpenAI:
    # The SDK insists on a key; megagate's clients send none that matters (no client keys configured here).
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused-by-megagate", max_retries=0)


async def test_completion_without_model_uses_default_model(gateway: Process, fake: FakeControl) -> None:
    """No `model` in the request: the upstream sees openai-gpt-oss-120b, and the answer comes back whole."""
    async with client(gateway) as sdk:
        # The SDK's signature requires model; omit it from the wire with extra_body=None tricks is not possible,
        # so send through the raw endpoint with the SDK's own transport.
        response = await sdk.post(
            "/chat/completions", body={"messages": [{"role": "user", "content": "hi"}]}, cast_to=dict[str, Any]
        )
    assert response["choices"][0]["message"]["content"] == FAKE_TEXT
    seen = fake.requests()[-1]
    assert seen["body"]["model"] == "openai-gpt-oss-120b"
    assert seen["path"] == "/v1/chat/completions"


async def test_completion_with_model(gateway: Process, fake: FakeControl) -> None:
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], temperature=0.7, max_tokens=100
        )
    assert completion.choices[0].message.content == FAKE_TEXT
    assert completion.model == "gpt-4"
    assert completion.usage is not None and completion.usage.completion_tokens == len(WORDS)
    body = fake.requests()[-1]["body"]
    assert body["model"] == "gpt-4" and body["temperature"] == 0.7 and body["max_tokens"] == 100


async def test_stream_deltas_concatenate_to_the_fake_text(gateway: Process, fake: FakeControl) -> None:
    async with client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
    assert "".join(deltas) == FAKE_TEXT
    assert len(deltas) == len(WORDS)
    assert usage is not None and usage.completion_tokens == len(WORDS)


async def test_tools_and_image_parts_pass_through_unchanged(gateway: Process, fake: FakeControl) -> None:
    """Fields megagate does not own reach the upstream as equivalent JSON, and tool_calls come back."""
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
        {"role": "user", "content": "and Paris?"},
    ]
    extra = {
        "response_format": {"type": "text"},
        "seed": 7,
        "logprobs": False,
        "user": "u-1",
        "x_future_field": [1, {"a": None}],
    }
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-4", messages=messages, tools=TOOLS, tool_choice="auto", extra_body=extra
        )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["location"] == "Paris"  # type: ignore[union-attr]
    body = fake.requests()[-1]["body"]
    assert body["messages"] == messages
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto"
    for name, value in extra.items():
        assert body[name] == value


async def test_streamed_tool_call_arguments_arrive_whole(gateway: Process, fake: FakeControl) -> None:
    async with client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
        )
        arguments = ""
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                arguments += call.function.arguments or "" if call.function else ""
    assert json.loads(arguments) == {"location": "Paris", "unit": "celsius"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"model": "gpt-4"}, "messages"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": -0.1}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 11}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.1}, "presence_penalty"),
        ({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": -3}, "frequency_penalty"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ],
)
async def test_invalid_parameters_get_400_from_the_sdk(
    gateway: Process, fake: FakeControl, body: dict[str, Any], param: str
) -> None:
    async with client(gateway) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.post("/chat/completions", body=body, cast_to=dict[str, Any])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert fake.requests() == []


async def test_models_lists_upstream_models_and_the_default(gateway: Process) -> None:
    async with client(gateway) as sdk:
        models = [model.id async for model in sdk.models.list()]
        one = await sdk.models.retrieve("gpt-4")
    assert "openai-gpt-oss-120b" in models and "gpt-4" in models
    assert one.id == "gpt-4"
