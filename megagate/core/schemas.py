"""msgspec Structs for the OpenAI chat wire format: response, stream chunk, usage and the model list.

Requests are not modelled here as a whole: they travel as raw fields (see `core.request`) so unknown fields pass
through untouched. These Structs are for what megagate itself writes (the fake upstream, translated answers) and
for the few fields it reads from upstream answers (`usage`, `model`). msgspec ignores unknown fields on decode.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Usage(msgspec.Struct, omit_defaults=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None
    index: int | None = None


class Message(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    index: int
    message: Message
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None


class Model(msgspec.Struct):
    id: str
    created: int = 0
    owned_by: str = "megallm"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"


class UsageView(msgspec.Struct):
    """The one field the relay reads from an upstream answer or chunk."""

    usage: Usage | None = None


usage_decoder = msgspec.json.Decoder(UsageView)
model_list_decoder = msgspec.json.Decoder(ModelList)


def read_chat_usage(data: bytes) -> Usage | None:
    """`usage` of an OpenAI answer or chunk, or None. Cheap for the chunks that carry none: no JSON decode."""
    if b'"usage"' not in data:
        return None
    try:
        return usage_decoder.decode(data).usage
    except msgspec.DecodeError:  # a malformed chunk is the client's to judge; usage is best effort
        return None
