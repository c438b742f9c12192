"""msgspec Structs for Anthropic's Messages API (https://docs.anthropic.com/en/api/messages) and its request rules.

As with the OpenAI side, a request travels as raw fields (`core.request`) so unknown fields pass through; these
Structs are what megagate writes when it translates (a message, stream events) and what it reads from upstream
answers (usage). Decoding ignores unknown fields; encoding omits what is unset, as Anthropic's own answers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from megagate.core.request import FALLBACK_RULES, FieldRule, at_least, between, rule
from megagate.core.usage import MessageUsage

ANTHROPIC_VERSION = b"2023-06-01"  # sent upstream when the client named none

# Anthropic's own ranges: temperature is 0..1 here (OpenAI's is 0..2), top_k exists, stop is `stop_sequences`.
ANTHROPIC_RULES: Mapping[str, FieldRule] = {
    "model": rule(str, "a string", lambda v: None if v else "must not be empty", nullable=False),
    "max_tokens": rule(int, "an integer", at_least(1)),
    "temperature": rule(float, "a number", between(0, 1)),
    "top_p": rule(float, "a number", between(0, 1)),
    "top_k": rule(int, "an integer", at_least(0)),
    "stream": rule(bool, "a boolean"),
    "stop_sequences": rule(list[str], "an array of strings"),
    "system": rule(str | list[dict[str, Any]], "a string or an array of content blocks"),
    "metadata": rule(dict[str, Any], "an object"),
    "tools": rule(list[dict[str, Any]], "an array of tool objects"),
    "tool_choice": rule(dict[str, Any], "an object"),
    **FALLBACK_RULES,
}


class ContentBlock(msgspec.Struct, omit_defaults=True):
    """A text, tool_use or thinking block (one Struct: the fields used depend on `type`)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = msgspec.UNSET
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None  # redacted_thinking: opaque, passed back as it came


class Message(msgspec.Struct):
    id: str
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    usage: MessageUsage
    stop_sequence: str | None = None
    type: str = "message"
    role: str = "assistant"


class Delta(msgspec.Struct, omit_defaults=True):
    """content_block_delta's `delta` (text_delta / input_json_delta / thinking_delta) or message_delta's."""

    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None  # signature_delta
    stop_reason: str | None = None
    stop_sequence: str | None = None


class StreamEvent(msgspec.Struct, omit_defaults=True):
    """Any Messages stream event; `type` says which fields it carries."""

    type: str
    message: Message | None = None
    index: int | None = None
    content_block: ContentBlock | None = None
    delta: Delta | None = None
    usage: MessageUsage | None = None
    error: dict[str, Any] | None = None


message_decoder = msgspec.json.Decoder(Message)
event_decoder = msgspec.json.Decoder(StreamEvent)
