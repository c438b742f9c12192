"""OpenAI ⇄ Anthropic translation: request round trips keep every mapped field, and a translated stream adds up to
the same message as the translated whole response (hypothesis drives both)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from megagate.core.sse import SSEDecoder
from megagate.core.translate import (
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from megagate.core.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
names = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
arguments = st.dictionaries(names, st.integers() | text, max_size=3).map(lambda d: msgspec.json.encode(d).decode())
image = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "https://example.com/cat.png"])


@st.composite
def conversations(draw: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    call_ids = iter(f"call_{i}" for i in range(100))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            parts: list[dict[str, Any]] = [{"type": "text", "text": draw(text)}]
            parts.append({"type": "image_url", "image_url": {"url": draw(image)}})
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": draw(text)})
        calls = [
            {"id": next(call_ids), "type": "function", "function": {"name": draw(names), "arguments": draw(arguments)}}
            for _ in range(draw(st.integers(0, 2)))
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | text) if calls else draw(text)}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": draw(text)})
    return messages


@st.composite
def openai_requests(draw: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": draw(names),
        "messages": draw(conversations()),
        "max_tokens": draw(st.integers(1, 9999)),
    }
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["top_p"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["stop"] = draw(st.lists(text, min_size=1, max_size=3))
    if draw(st.booleans()):
        request["stream"] = True
    if draw(st.booleans()):
        request["user"] = draw(names)
    if draw(st.booleans()):
        request["tools"] = [
            {"type": "function", "function": {"name": draw(names), "description": draw(text),
                                              "parameters": {"type": "object", "properties": {}}}}
        ]  # fmt: skip
        request["tool_choice"] = draw(
            st.sampled_from(["auto", "required", "none", {"type": "function", "function": {"name": "x"}}])
        )
        if draw(st.booleans()):
            request["parallel_tool_calls"] = False
    return request


def normalized(request: dict[str, Any]) -> dict[str, Any]:
    """What survives by design: text-only user parts read as a string, stream_options is megagate's addition."""
    out = {k: v for k, v in request.items() if k != "stream_options"}
    messages = []
    for message in request["messages"]:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list) and all(p["type"] == "text" for p in content):
            message["content"] = "".join(p["text"] for p in content)
        messages.append(message)
    out["messages"] = messages
    return out


@settings(max_examples=200)
@given(openai_requests())
def test_openai_request_round_trip_keeps_every_mapped_field(request: dict[str, Any]) -> None:
    anthropic = openai_to_anthropic_request(request)
    assert [m["role"] for m in anthropic["messages"]][::2] == ["user"] * len(anthropic["messages"][::2])
    assert normalized(anthropic_to_openai_request(anthropic)) == normalized(request)


def test_anthropic_request_maps_to_openai() -> None:
    request = {
        "model": "claude",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief"}],
        "top_k": 5,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "look", "input": {"q": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "a cat"}]},
        ],
        "tools": [{"name": "look", "description": "looks", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
    }  # fmt: skip
    assert anthropic_to_openai_request(request) == {
        "model": "claude",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tu_1", "type": "function", "function": {"name": "look", "arguments": '{"q":1}'}}]},
            {"role": "tool", "tool_call_id": "tu_1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "description": "looks",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }  # fmt: skip


# --- streams ------------------------------------------------------------------------------------------------------

finish_reasons = st.sampled_from(["stop", "length", "tool_calls"])


def split(value: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(value) + 1) for c in cuts} | {0, len(value)})
    return [value[a:b] for a, b in itertools.pairwise(points) if b > a]


def events_of(stream: bytes) -> list[tuple[str | None, bytes]]:
    _, events = SSEDecoder().receive_data(stream)
    return [(e.event, e.data) for e in events]


@st.composite
def openai_answers(draw: Any) -> tuple[dict[str, Any], list[bytes]]:
    """A completion and the chunks an upstream could have streamed it as."""
    content = draw(st.none() | text)
    calls = [(f"call_{i}", draw(names), draw(arguments)) for i in range(draw(st.integers(0, 2)))]
    finish = draw(finish_reasons)
    usage = {"prompt_tokens": draw(st.integers(0, 999)), "completion_tokens": draw(st.integers(0, 999))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
        ]
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}  # fmt: skip

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}  # fmt: skip
        return msgspec.json.encode(body)

    chunks = [chunk({"role": "assistant", "content": ""})]
    for piece in split(content or "", draw(st.lists(st.integers(0, 50), max_size=4))):
        chunks.append(chunk({"content": piece}))
    for index, (call_id, name, args) in enumerate(calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))  # fmt: skip
        for piece in split(args, draw(st.lists(st.integers(0, 50), max_size=4))):
            chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    chunks.append(chunk({}, finish))
    chunks.append(msgspec.json.encode({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                       "model": "m", "choices": [], "usage": usage}))  # fmt: skip
    chunks.append(b"[DONE]")
    return completion, chunks


def accumulate_anthropic(events: list[tuple[str | None, bytes]]) -> dict[str, Any]:
    """What an Anthropic SDK builds from a stream: content blocks, stop reason, usage."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        event = msgspec.json.decode(data)
        assert event["type"] == name
        if name == "message_start":
            message = event["message"]
        elif name == "content_block_start":
            assert event["index"] == len(message["content"])
            message["content"].append(event["content_block"])
        elif name == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and event["index"] in partial:
            message["content"][event["index"]]["input"] = msgspec.json.decode(partial[event["index"]])
        elif name == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["usage"] = event["usage"]
    assert events[-1][0] == "message_stop"
    return message


@settings(max_examples=200)
@given(openai_answers())
def test_openai_stream_translates_to_the_same_message_as_the_whole_answer(answer: Any) -> None:
    completion, chunks = answer
    translator = OpenAIToAnthropicStream("m")
    stream = b"".join(translator.feed(c) for c in chunks)
    streamed = accumulate_anthropic(events_of(stream))
    whole = msgspec.json.decode(openai_to_anthropic_response(msgspec.json.encode(completion)))
    assert streamed["content"] == whole["content"]
    assert streamed["stop_reason"] == whole["stop_reason"]
    assert streamed["usage"] == whole["usage"]


@st.composite
def anthropic_answers(draw: Any) -> tuple[dict[str, Any], list[bytes]]:
    content: list[dict[str, Any]] = []
    if draw(st.booleans()):
        content.append({"type": "text", "text": draw(text)})
    for i in range(draw(st.integers(0, 2))):
        content.append({"type": "tool_use", "id": f"toolu_{i}", "name": draw(names),
                        "input": msgspec.json.decode(draw(arguments))})  # fmt: skip
    usage = {"input_tokens": draw(st.integers(0, 999)), "output_tokens": draw(st.integers(0, 999))}
    stop = draw(st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence"]))
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": content,
               "stop_reason": stop, "stop_sequence": None, "usage": usage}  # fmt: skip
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": usage["input_tokens"],
                                                                       "output_tokens": 1}}  # fmt: skip
    events = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(content):
        if block["type"] == "text":
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            for piece in split(block["text"], draw(st.lists(st.integers(0, 50), max_size=4))):
                events.append(
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
                )
        else:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {**block, "input": {}}})  # fmt: skip
            raw = msgspec.json.encode(block["input"]).decode()
            for piece in split(raw, draw(st.lists(st.integers(0, 50), max_size=4))):
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": piece}})  # fmt: skip
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}})  # fmt: skip
    events.append({"type": "message_stop"})
    return message, [msgspec.json.encode(e) for e in events]


@settings(max_examples=200)
@given(anthropic_answers())
def test_anthropic_stream_translates_to_the_same_completion_as_the_whole_answer(answer: Any) -> None:
    message, events = answer
    translator = AnthropicToOpenAIStream("claude", 1, include_usage=True)
    stream = b"".join(translator.feed(e) for e in events)
    chunks = [msgspec.json.decode(data) for _, data in events_of(stream) if data != b"[DONE]"]
    assert stream.endswith(b"data: [DONE]\n\n")
    whole = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(message), 1))
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = (call.get("function") or {}).get("name") or entry["name"]
                entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    expected = whole["choices"][0]
    assert text == (expected["message"]["content"] or "")
    assert [(c["id"], c["name"], msgspec.json.decode(c["arguments"])) for c in calls.values()] == [
        (c["id"], c["function"]["name"], msgspec.json.decode(c["function"]["arguments"]))
        for c in expected["message"].get("tool_calls") or []
    ]
    assert finish == expected["finish_reason"] and usage == whole["usage"]


def test_whole_responses_map_stop_reasons_tool_calls_and_usage() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "tool_use",
               "content": [{"type": "text", "text": "let me look"},
                           {"type": "tool_use", "id": "tu_1", "name": "look", "input": {"q": "cat"}}],
               "usage": {"input_tokens": 12, "output_tokens": 7}}  # fmt: skip
    completion = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(message), 1700000000))
    assert completion["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "tu_1", "type": "function", "function": {"name": "look", "arguments": '{"q":"cat"}'}}]},
        "finish_reason": "tool_calls",
        "logprobs": None,
    }  # fmt: skip
    assert completion["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                                   "prompt_tokens_details": {"cached_tokens": 0},
                                   "completion_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    assert completion["created"] == 1700000000 and completion["object"] == "chat.completion"
    back = msgspec.json.decode(openai_to_anthropic_response(msgspec.json.encode(completion)))
    assert back["stop_reason"] == "tool_use" and back["content"] == message["content"]
    assert back["usage"] == {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0}  # fmt: skip
    for finish, stop in [("stop", "end_turn"), ("length", "max_tokens")]:
        completion["choices"][0]["finish_reason"] = finish
        assert msgspec.json.decode(openai_to_anthropic_response(msgspec.json.encode(completion)))["stop_reason"] == stop
