"""msgspec Structs for the OpenAI chat wire format: response, stream chunk, usage and the model list.

Requests are not modelled here as a whole: they travel as raw fields (see `core.request`) so unknown fields pass
through untouched. These Structs are for what megagate itself writes (the fake upstream, translated answers) and
for the few fields it reads from upstream answers (`model`; `usage` is `core.usage`'s). msgspec ignores unknown
fields on decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from megagate.core.usage import ChatUsage


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None
    index: int | None = None


class ReasoningDetail(msgspec.Struct, omit_defaults=True):
    """One signed piece of reasoning, as OpenRouter documents `reasoning_details`: `reasoning.text` (a thinking
    block's text and signature) or `reasoning.encrypted` (a redacted block's opaque data), `format` naming where it
    must go back to (`anthropic-claude-v1`)."""

    type: str
    text: str | None = None
    signature: str | None = None
    data: str | None = None
    format: str | None = None
    index: int | None = None


class Message(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    # the model's reasoning (DeepSeek's and vLLM's field) and its signed blocks, when it reasoned; else absent
    reasoning_content: str | msgspec.UnsetType = msgspec.UNSET
    reasoning_details: list[ReasoningDetail] | msgspec.UnsetType = msgspec.UNSET


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
    usage: ChatUsage | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning_details: list[ReasoningDetail] | None = None


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
    usage: ChatUsage | None = None
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None


class ModelPricing(msgspec.Struct):
    """What MegaLLM's model list says a model costs (its docs: per million tokens, with a currency)."""

    input_tokens_cost_per_million: float | None = None
    output_tokens_cost_per_million: float | None = None
    currency: str | None = None


class Model(msgspec.Struct):
    id: str
    created: int = 0
    owned_by: str = "megallm"
    object: str = "model"
    pricing: ModelPricing | msgspec.UnsetType = msgspec.UNSET  # passed on when the upstream lists one


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"


model_list_decoder = msgspec.json.Decoder(ModelList)
