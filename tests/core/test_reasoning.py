"""Anthropic thinking reaches OpenAI-format clients as `reasoning_content` + signed `reasoning_details`, whole and
streamed, and comes back as the same blocks, byte for byte, before the turn's tool call; unsigned reasoning is
never forged into a signed block."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.translate import anthropic_to_openai_response, openai_to_anthropic_request
from megagate.core.translate_stream import AnthropicToOpenAIStream

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds2ZNsxkl"
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "tool_use",
           "content": [{"type": "thinking", "thinking": "The user wants the weather.", "signature": SIGNATURE},
                       {"type": "redacted_thinking", "data": "opaque-bytes=="},
                       {"type": "text", "text": "Let me look."},
                       {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Paris"}}],
           "usage": {"input_tokens": 10, "output_tokens": 20}}  # fmt: skip


def test_a_whole_answer_carries_its_reasoning_and_its_signed_blocks() -> None:
    message = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(MESSAGE), 1))["choices"][0][
        "message"
    ]
    assert message["reasoning_content"] == "The user wants the weather."
    assert message["reasoning_details"] == [
        {"type": "reasoning.text", "text": "The user wants the weather.", "signature": SIGNATURE,
         "format": "anthropic-claude-v1", "index": 0},
        {"type": "reasoning.encrypted", "data": "opaque-bytes==", "format": "anthropic-claude-v1", "index": 1},
    ]  # fmt: skip
    assert message["content"] == "Let me look." and message["tool_calls"][0]["function"]["name"] == "weather"
    plain = {**MESSAGE, "content": [{"type": "text", "text": "hi"}]}
    told = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(plain), 1))["choices"][0]["message"]
    assert "reasoning_content" not in told and "reasoning_details" not in told  # nothing when it did not reason


def test_the_next_turn_gives_the_blocks_back_byte_for_byte_before_the_tool_use() -> None:
    answered = msgspec.json.decode(anthropic_to_openai_response(msgspec.json.encode(MESSAGE), 1))
    assistant = answered["choices"][0]["message"]
    body = {"model": "claude", "messages": [
        {"role": "user", "content": "weather in Paris?"}, assistant,
        {"role": "tool", "tool_call_id": "tu_1", "content": "sunny"}]}  # fmt: skip
    sent = openai_to_anthropic_request(body)["messages"][1]["content"]
    assert sent[:2] == MESSAGE["content"][:2]  # the thinking and the redacted block, as Anthropic gave them
    assert [b["type"] for b in sent] == ["thinking", "redacted_thinking", "text", "tool_use"]


def test_unsigned_reasoning_is_not_forged_and_litellms_thinking_blocks_are_read() -> None:
    unsigned = {"role": "assistant", "content": "ok", "reasoning_content": "I think..."}
    sent = openai_to_anthropic_request({"model": "c", "messages": [{"role": "user", "content": "q"}, unsigned]})
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "ok"}]
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": SIGNATURE}, {"type": "thinking", "thinking": "x"}]
    litellm = {"role": "assistant", "content": "ok", "thinking_blocks": blocks}
    sent = openai_to_anthropic_request({"model": "c", "messages": [{"role": "user", "content": "q"}, litellm]})
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": SIGNATURE}
    assert len(sent["messages"][1]["content"]) == 2  # the unsigned one left out
    foreign = {"role": "assistant", "content": "ok", "reasoning_details": [
        {"type": "reasoning.text", "text": "t", "signature": "s", "format": "openai-responses-v1"}]}  # fmt: skip
    sent = openai_to_anthropic_request({"model": "c", "messages": [{"role": "user", "content": "q"}, foreign]})
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "ok"}]  # another provider's: not Anthropic's


def stream_events(thinking: list[str], signature: list[str]) -> list[bytes]:
    events: list[Any] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "model": "claude", "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": t}}
          for t in thinking),
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": s}}
          for s in signature),
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Sunny."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]  # fmt: skip
    return [msgspec.json.encode(e) for e in events]


@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6),
    st.lists(st.text(alphabet="abcdef0123456789", min_size=1, max_size=8), min_size=1, max_size=3),
)
def test_a_stream_tells_the_reasoning_as_it_comes_and_the_signed_block_at_its_end(
    thinking: list[str], signature: list[str]
) -> None:
    translator = AnthropicToOpenAIStream("claude", 1)
    chunks = [c for data in stream_events(thinking, signature) for c in translator.events(data) if c is not None]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.reasoning_content or "" for d in deltas) == "".join(thinking)
    details = [detail for d in deltas for detail in d.reasoning_details or []]
    assert len(details) == 1 and details[0].text == "".join(thinking) and details[0].signature == "".join(signature)
    assert "".join(d.content or "" for d in deltas) == "Sunny."
