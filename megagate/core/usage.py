"""The tokens of one answer, by kind, whichever format reported them, and written back into any format.

`Usage` keeps five kinds: `input` (prompt tokens neither read from nor written to a cache), `cache_read`,
`cache_write`, `output` and `reasoning` (the part of `output` spent thinking). The formats count the prompt
differently, and each translation must keep every kind (LiteLLM #11789 billed streamed cache reads as ordinary
input; ogx #6415 counted them twice):
- OpenAI chat: `prompt_tokens` is the whole prompt (cached included), `prompt_tokens_details.cached_tokens` the
  cache reads, `completion_tokens_details.reasoning_tokens` the reasoning. Some OpenAI-format gateways add
  Anthropic's `cache_creation_input_tokens` beside them (LiteLLM does; inside `prompt_tokens`).
- Anthropic Messages: `input_tokens` excludes the cache: `cache_read_input_tokens` and
  `cache_creation_input_tokens` (or its `cache_creation` breakdown) come beside it. A stream reports them in
  `message_start` and may report them again, with the output, in `message_delta`: a later value wins per field.
- Responses: `input_tokens` is the whole prompt, `input_tokens_details.cached_tokens` and
  `output_tokens_details.reasoning_tokens` as in chat.
A `UsageReport` is what one answer or event stated: only the kinds it named, so that merging keeps the others.
"""

from __future__ import annotations

from typing import Any

import msgspec

UsageReport = dict[str, int]  # the kinds one event stated: "input", "cache_read", "cache_write", "output", ...
KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")


class Usage(msgspec.Struct):
    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def prompt(self) -> int:
        """The whole prompt, as OpenAI's `prompt_tokens` and Responses' `input_tokens` count it."""
        return self.input + self.cache_read + self.cache_write

    @property
    def total(self) -> int:
        """What a key's and a client's tpm window spend."""
        return self.prompt + self.output

    def merged(self, report: UsageReport) -> Usage:
        """This usage with what a later event stated in its place (per kind)."""
        return Usage(**{kind: report.get(kind, getattr(self, kind)) for kind in KINDS})

    @classmethod
    def of(cls, report: UsageReport) -> Usage:
        return cls(**report)


# --- OpenAI chat ---


class PromptTokensDetails(msgspec.Struct, omit_defaults=True):
    cached_tokens: int | None = None


class CompletionTokensDetails(msgspec.Struct, omit_defaults=True):
    reasoning_tokens: int | None = None


class ChatUsage(msgspec.Struct, omit_defaults=True):
    """OpenAI chat's `usage` object, as read and as written."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    cache_creation_input_tokens: int | None = None  # LiteLLM's addition, when an OpenAI-format gateway reports it


def from_chat(usage: ChatUsage) -> UsageReport:
    prompt, output = usage.prompt_tokens or 0, usage.completion_tokens or 0
    cached = (usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None) or 0
    written = usage.cache_creation_input_tokens or 0
    details = usage.completion_tokens_details
    reasoning = (details.reasoning_tokens if details else None) or 0
    return {"input": max(0, prompt - cached - written), "cache_read": cached, "cache_write": written,
            "output": output, "reasoning": reasoning}  # fmt: skip


def to_chat(usage: Usage) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=usage.prompt, completion_tokens=usage.output, total_tokens=usage.total,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cache_read),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=usage.reasoning),
        cache_creation_input_tokens=usage.cache_write or None,
    )  # fmt: skip


# --- Anthropic Messages ---


class CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class MessageUsage(msgspec.Struct, omit_defaults=True):
    """Anthropic's `usage` (a message's, message_start's or message_delta's), as read and as written."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None


def from_message(usage: MessageUsage) -> UsageReport:
    report: UsageReport = {}
    if usage.input_tokens is not None:
        report["input"] = usage.input_tokens
    if usage.cache_read_input_tokens is not None:
        report["cache_read"] = usage.cache_read_input_tokens
    if usage.cache_creation_input_tokens is not None:
        report["cache_write"] = usage.cache_creation_input_tokens
    elif usage.cache_creation is not None:
        report["cache_write"] = (
            usage.cache_creation.ephemeral_5m_input_tokens + usage.cache_creation.ephemeral_1h_input_tokens
        )
    if usage.output_tokens is not None:
        report["output"] = usage.output_tokens
    return report


def to_message(usage: Usage) -> MessageUsage:
    return MessageUsage(
        input_tokens=usage.input,
        output_tokens=usage.output,
        cache_creation_input_tokens=usage.cache_write,
        cache_read_input_tokens=usage.cache_read,
    )


# --- Responses ---


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    """The Responses API's `usage` (every field present, as OpenAI writes it)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None


def from_response(usage: ResponseUsage) -> UsageReport:
    cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
    reasoning = usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
    return {"input": max(0, usage.input_tokens - cached), "cache_read": cached, "cache_write": 0,
            "output": usage.output_tokens, "reasoning": reasoning}  # fmt: skip


def to_response(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total,
    }


# --- reading an upstream's bytes ---


class _ChatView(msgspec.Struct):
    usage: ChatUsage | None = None


class _MessageView(msgspec.Struct):
    usage: MessageUsage | None = None
    message: _MessageView | None = None


class _ResponseView(msgspec.Struct):
    usage: ResponseUsage | None = None
    response: _ResponseView | None = None


_chat_view = msgspec.json.Decoder(_ChatView)
_message_view = msgspec.json.Decoder(_MessageView)
_response_view = msgspec.json.Decoder(_ResponseView)


def read_usage(data: bytes, fmt: str) -> UsageReport | None:
    """What an answer or stream event in format `fmt` ("openai", "anthropic", "responses") says of its usage, or
    None. Cheap for the events that say nothing: no JSON decode without a `"usage"` in them. Best effort: a
    malformed body is the client's to judge, not the counter's."""
    if b'"usage"' not in data:
        return None
    try:
        if fmt == "openai":
            chat = _chat_view.decode(data).usage
            return from_chat(chat) if chat is not None else None
        if fmt == "anthropic":
            view = _message_view.decode(data)
            message = view.usage or (view.message.usage if view.message else None)
            return from_message(message) if message is not None else None
        responses = _response_view.decode(data)
        found = responses.usage or (responses.response.usage if responses.response else None)
        return from_response(found) if found is not None else None
    except msgspec.DecodeError:
        return None
