"""Token truth: usage read from any format and written into any other keeps every kind of token, streamed or whole,
translated or relayed; and OpenAI `cache_control` marks reach the same Anthropic blocks."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.stream_relay import StreamRelay
from megagate.core.translate import (
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from megagate.core.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from megagate.core.usage import (
    KINDS,
    Usage,
    from_chat,
    from_message,
    from_response,
    read_usage,
    to_chat,
    to_message,
    to_response,
)

counts = st.integers(min_value=0, max_value=10**7)
usages = st.builds(Usage, input=counts, cache_read=counts, cache_write=counts, output=counts).flatmap(
    lambda u: st.integers(0, u.output).map(lambda r: Usage(u.input, u.cache_read, u.cache_write, u.output, r))
)

# The measurement: an upstream that reports prompt caching.
ANTHROPIC_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 50,
                   "output_tokens": 5}  # fmt: skip
CHAT_USAGE = {"prompt_tokens": 1060, "completion_tokens": 25, "total_tokens": 1085,
              "prompt_tokens_details": {"cached_tokens": 1000},
              "completion_tokens_details": {"reasoning_tokens": 20}}  # fmt: skip


def through_bytes(struct: Any, decode: type) -> Any:
    return msgspec.json.decode(msgspec.json.encode(struct), type=decode)


@given(usages)
def test_every_format_keeps_the_prompt_the_cache_reads_and_the_output(usage: Usage) -> None:
    from megagate.core.usage import ChatUsage, MessageUsage, ResponseUsage

    chat = Usage.of(from_chat(through_bytes(to_chat(usage), ChatUsage)))
    assert chat == usage  # OpenAI's prompt_tokens = input + cache_read + cache_write, all kept
    message = Usage.of(from_message(through_bytes(to_message(usage), MessageUsage)))
    assert message == Usage(usage.input, usage.cache_read, usage.cache_write, usage.output, 0)  # no reasoning count
    response = Usage.of(from_response(through_bytes(to_response(usage), ResponseUsage)))
    assert (response.prompt, response.cache_read, response.output, response.reasoning) == (
        usage.prompt, usage.cache_read, usage.output, usage.reasoning)  # fmt: skip
    wire = to_chat(usage)
    assert wire.prompt_tokens == usage.input + usage.cache_read + usage.cache_write
    assert to_message(Usage.of(from_chat(wire))).input_tokens == usage.input  # = prompt - cached - written


@given(st.lists(st.dictionaries(st.sampled_from(KINDS), counts), min_size=1, max_size=5))
def test_a_later_event_wins_kind_by_kind_and_keeps_what_it_does_not_say(reports: list[dict[str, int]]) -> None:
    merged = Usage()
    for report in reports:
        merged = merged.merged(report)
    expected = {kind: 0 for kind in KINDS}
    for report in reports:
        expected.update(report)
    assert merged == Usage(**expected)


def test_whole_answers_translate_cache_tokens_both_ways() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "hi"}], "usage": ANTHROPIC_USAGE}  # fmt: skip
    completion = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(message), 1))
    assert completion["usage"]["prompt_tokens"] == 1060 and completion["usage"]["completion_tokens"] == 5
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 1000}
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    chat = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt", "usage": CHAT_USAGE,
            "choices": [choice]}  # fmt: skip
    back = msgspec.json.decode(openai_to_anthropic_response(msgspec.json.encode(chat)))["usage"]
    assert back == {"input_tokens": 60, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 0,
                    "output_tokens": 25}  # fmt: skip


def anthropic_stream() -> list[bytes]:
    """As Anthropic streams: input and cache counts in message_start, only the output in message_delta."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
               "stop_reason": None, "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}  # fmt: skip
    start = {"type": "message_start", "message": message}
    return [
        msgspec.json.encode(start),
        b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}',
        b'{"type":"content_block_stop","index":0}',
        b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}',
        b'{"type":"message_stop"}',
    ]


def sse(kinds_and_data: list[bytes]) -> bytes:
    return b"".join(b"event: " + msgspec.json.decode(d)["type"].encode() + b"\ndata: " + d + b"\n\n"
                    for d in kinds_and_data)  # fmt: skip


def test_a_streamed_anthropic_answer_counts_the_input_of_message_start() -> None:
    """Measured at 88498a3: message_delta's usage replaced message_start's, so a streamed answer (Claude Code
    always streams) counted 0 input tokens."""
    relay = StreamRelay("anthropic", "anthropic", None, lambda data: AssertionError())  # type: ignore[arg-type,return-value]
    relay.receive_data(sse(anthropic_stream()))
    assert relay.usage == Usage(input=10, cache_read=1000, cache_write=50, output=5)
    translated = AnthropicToOpenAIStream("claude", 1, include_usage=True)
    chunks = [c for data in anthropic_stream() for c in translated.events(data) if c is not None and c.usage]
    assert len(chunks) == 1 and chunks[0].usage is not None
    assert Usage.of(from_chat(chunks[0].usage)) == Usage(input=10, cache_read=1000, cache_write=50, output=5)


def test_an_openai_stream_translated_to_anthropic_reports_cache_reads_beside_the_input() -> None:
    translator = OpenAIToAnthropicStream("gpt")
    translator.feed(b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,'
                    b'"delta":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}')  # fmt: skip
    usage_chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": [],
                   "usage": CHAT_USAGE}  # fmt: skip
    translator.feed(msgspec.json.encode(usage_chunk))
    out = translator.feed(b"[DONE]")
    delta = next(line for line in out.split(b"\n") if line.startswith(b"data: ") and b"message_delta" in line)
    assert read_usage(delta[6:], "anthropic") == {"input": 60, "cache_read": 1000, "cache_write": 0, "output": 25}


def test_cache_control_marks_reach_the_same_anthropic_blocks() -> None:
    mark = {"type": "ephemeral"}
    long = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": long}]},
            {"role": "system", "content": "more rules"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "big doc", "cache_control": mark}],
            },
            {"role": "assistant", "content": "ok", "cache_control": mark},
            {"role": "user", "content": "next", "cache_control": mark},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "found", "cache_control": mark},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}, "cache_control": mark}],
    }
    out = openai_to_anthropic_request(body)
    assert out["system"] == [{"type": "text", "text": "rules", "cache_control": long},
                             {"type": "text", "text": "more rules"}]  # fmt: skip
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"},
                                             {"type": "text", "text": "big doc", "cache_control": mark}]  # fmt: skip
    assert out["messages"][1]["content"] == [{"type": "text", "text": "ok", "cache_control": mark}]
    assert out["messages"][2]["content"] == [{"type": "text", "text": "next", "cache_control": mark}]
    assert out["messages"][4]["content"][0]["cache_control"] == mark  # the tool result
    assert out["tools"][0]["cache_control"] == mark
    unmarked = openai_to_anthropic_request({"model": "c", "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})  # fmt: skip
    assert unmarked["system"] == "s" and unmarked["messages"][0]["content"] == "u"  # no marks: unchanged


def test_a_responses_stream_over_an_anthropic_upstream_reports_cached_tokens() -> None:
    from megagate.core.responses_stream import ChatToResponsesStream
    from megagate.core.stream_relay import AnthropicToResponsesStream

    chain = AnthropicToResponsesStream(AnthropicToOpenAIStream("claude", 1), ChatToResponsesStream("claude", 1))
    out = b"".join(chain.feed(data) for data in anthropic_stream())
    completed = next(line for line in out.split(b"\n") if line.startswith(b"data: ") and b"response.completed" in line)
    usage = msgspec.json.decode(completed[6:])["response"]["usage"]
    assert usage == {"input_tokens": 1060, "input_tokens_details": {"cached_tokens": 1000}, "output_tokens": 5,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1065}  # fmt: skip
