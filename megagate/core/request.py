"""Validate a chat request body and fill its defaults without touching fields megagate does not own.

The body is decoded once as `dict[str, msgspec.Raw]`: each value stays the exact bytes the client sent, so `tools`,
`response_format`, image parts or a field invented next year survive byte for byte. Only the fields a rule names
are decoded, each with a decoder built once. A body is re-encoded only when something changed (a default filled,
a megagate-only field removed); otherwise the original bytes go upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from megagate.core.errors import InvalidRequest

RawFields = dict[str, msgspec.Raw]

_fields_decoder = msgspec.json.Decoder(RawFields)
_encoder = msgspec.json.Encoder()

INT64_MAX = 2**63 - 1  # the largest integer an upstream parses; a larger one is the client's error, not the upstream's
# Fields megagate consumes (MegaLLM's fallback API); they never go upstream.
FALLBACK_FIELDS = ("fallback_models", "fallback_on_rate_limit", "fallback_on_error")
# Besides `messages`, what the model reads as prompt (Anthropic's `system`; both formats' `tools`).
PROMPT_FIELDS = ("system", "tools", "instructions")


class _Role(msgspec.Struct):
    role: Any = msgspec.UNSET


Check = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one top-level field is checked: the JSON type it must decode to and an optional range check."""

    decoder: msgspec.json.Decoder[Any]
    type_name: str
    check: Check | None = None
    nullable: bool = True


def between(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if low <= value <= high:
            return None
        return f"must be between {low:g} and {high:g}, got {value!r}"

    return check


def at_least(low: int) -> Check:
    """An integer from `low` up to int64's largest (JSON allows any size; the upstreams do not)."""

    def check(value: Any) -> str | None:
        if value < low:
            return f"must be at least {low}, got {value!r}"
        return None if value <= INT64_MAX else f"must be at most {INT64_MAX}, got {value!r}"

    return check


def rule(type_: Any, type_name: str, check: Check | None = None, *, nullable: bool = True) -> FieldRule:
    return FieldRule(msgspec.json.Decoder(type_), type_name, check, nullable)


_NUMBER = float  # msgspec accepts JSON integers for float and rejects booleans
# MegaLLM's fallback fields, in either format: checked here, consumed by megagate, never sent upstream.
FALLBACK_RULES: Mapping[str, FieldRule] = {
    "fallback_models": rule(list[str], "an array of strings"),
    "fallback_on_rate_limit": rule(bool, "a boolean"),
    "fallback_on_error": rule(bool, "a boolean"),
}
OPENAI_RULES: Mapping[str, FieldRule] = {
    "model": rule(str, "a string", lambda v: None if v else "must not be empty", nullable=False),
    "temperature": rule(_NUMBER, "a number", between(0, 2)),
    "top_p": rule(_NUMBER, "a number", between(0, 1)),
    "n": rule(int, "an integer", between(1, 10)),
    "presence_penalty": rule(_NUMBER, "a number", between(-2, 2)),
    "frequency_penalty": rule(_NUMBER, "a number", between(-2, 2)),
    "max_tokens": rule(int, "an integer", at_least(1)),
    "max_completion_tokens": rule(int, "an integer", at_least(1)),
    "stream": rule(bool, "a boolean"),
    **FALLBACK_RULES,
}

# The Responses API (`/v1/responses`): its own names for the seed's parameters; `input` is checked for its shape.
RESPONSES_RULES: Mapping[str, FieldRule] = {
    "model": OPENAI_RULES["model"],
    "temperature": OPENAI_RULES["temperature"],
    "top_p": OPENAI_RULES["top_p"],
    "max_output_tokens": rule(int, "an integer", at_least(1)),
    "stream": OPENAI_RULES["stream"],
    **FALLBACK_RULES,
}
EMBEDDINGS_RULES: Mapping[str, FieldRule] = {"model": OPENAI_RULES["model"], **FALLBACK_RULES}
Shape = Literal["messages", "input"]  # what a request carries its prompt in

_messages_decoder = msgspec.json.Decoder(list[_Role])
_types_of = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


@dataclass(slots=True)
class ChatRequest:
    """A validated request: its raw fields, what megagate routes on, and whether the body must be re-encoded."""

    fields: RawFields
    body: bytes
    model: str
    stream: bool
    max_tokens: int | None
    prompt_bytes: int
    fallback_models: list[str] | None = None
    fallback_on_rate_limit: bool = True
    fallback_on_error: bool = True
    dirty: bool = field(default=False)

    @property
    def prompt_tokens(self) -> int:
        """A rough count of the prompt's tokens: its JSON bytes (messages, system, tools) over four. It plans the
        key's token window before the upstream's real usage corrects it, and answers a local token count."""
        return max(1, self.prompt_bytes // 4)

    def estimated_tokens(self, default_max_tokens: int) -> int:
        """The prompt's estimate plus the completion budget (`max_tokens`, else the default): what a key's and a
        client's token windows reserve at admission, until the upstream's real usage settles them."""
        completion = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return self.prompt_tokens + completion

    def encode(self) -> bytes:
        """The body to send upstream: the client's bytes unless a field was added, changed or removed."""
        if self.dirty:
            self.body = _encoder.encode(self.fields)
            self.dirty = False
        return self.body

    def set_model(self, model: str) -> None:
        self.model = model
        self.fields["model"] = msgspec.Raw(_encoder.encode(model))
        self.dirty = True


@dataclass(frozen=True, slots=True)
class RequestDefaults:
    """What to fill when a field is absent; built once from config, values pre-encoded."""

    model: str = "openai-gpt-oss-120b"
    params: Mapping[str, msgspec.Raw] = field(default_factory=dict)

    @classmethod
    def from_values(cls, model: str, params: Mapping[str, Any], rules: Mapping[str, FieldRule]) -> RequestDefaults:
        encoded = {}
        for name, value in params.items():
            raw = msgspec.Raw(_encoder.encode(value))
            if name in rules:
                _check_field(name, raw, rules[name])
            encoded[name] = raw
        return cls(model, encoded)


def _describe(raw: bytes) -> str:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "invalid JSON"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return _types_of.get(type(value), "a value")


def _check_field(name: str, raw: msgspec.Raw, rule: FieldRule) -> Any:
    if rule.nullable and bytes(raw) == b"null":
        return None
    try:
        value = rule.decoder.decode(raw)
    except msgspec.ValidationError:
        raise InvalidRequest(
            f"Invalid type for '{name}': expected {rule.type_name}, but got {_describe(raw)}.", param=name
        ) from None
    if rule.check is not None and (problem := rule.check(value)) is not None:
        raise InvalidRequest(f"Invalid value for '{name}': {problem}.", param=name)
    return value


def decode_fields(body: bytes) -> RawFields:
    """The body's top-level fields, or InvalidRequest if it is not a JSON object in UTF-8."""
    try:
        body.decode()  # msgspec leaves raw values unchecked: a bad byte inside a string must not reach the upstream
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        return _fields_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:  # msgspec's own nesting limit
        raise InvalidRequest("The request body is nested too deeply.") from None


def _check_messages(fields: RawFields) -> int:
    """`messages` must be a non-empty array of objects, each with a string `role`. Which roles exist is the
    upstream's to judge (new ones appear with every client release); megagate only needs the role to be a string
    to route and translate."""
    raw = fields.get("messages")
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    try:
        messages = _messages_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(
            f"Invalid 'messages': must be an array of message objects ({exc}).", param="messages"
        ) from None
    if not messages:
        raise InvalidRequest("Invalid 'messages': must contain at least one message.", param="messages")
    for index, message in enumerate(messages):
        if message.role is msgspec.UNSET:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{index}].role'.", param=f"messages[{index}].role"
            )
        if not isinstance(message.role, str):
            raise InvalidRequest(
                f"Invalid type for 'messages[{index}].role': expected a string, but got "
                f"{_describe(_encoder.encode(message.role))}.",
                param=f"messages[{index}].role",
            )
    return len(raw)


def session_of(request: ChatRequest) -> str | None:
    """What a conversation calls itself, for session affinity: OpenAI's `prompt_cache_key`, else Anthropic's
    `metadata.user_id` (Claude Code sends one per session); None when neither is a non-empty string."""
    cache_key, metadata = request.fields.get("prompt_cache_key"), request.fields.get("metadata")
    if cache_key is not None and isinstance(key := msgspec.json.decode(cache_key), str) and key:
        return key
    decoded = msgspec.json.decode(metadata) if metadata is not None else None
    user = decoded.get("user_id") if isinstance(decoded, dict) else None
    return user if isinstance(user, str) and user else None


def _check_input(fields: RawFields) -> int:
    """`input` (Responses, embeddings) is a string or an array when present; what is inside is the upstream's."""
    raw = fields.get("input")
    if raw is None:
        return 0
    if bytes(memoryview(raw)[:1]) not in (b'"', b"["):
        raise InvalidRequest(
            f"Invalid type for 'input': expected a string or an array, but got {_describe(raw)}.", param="input"
        )
    return len(raw)


def prepare_chat_request(
    body: bytes,
    defaults: RequestDefaults,
    rules: Mapping[str, FieldRule] = OPENAI_RULES,
    required: frozenset[str] = frozenset(),
    shape: Shape = "messages",
) -> ChatRequest:
    """Validate `body`, fill defaults and lift out what megagate routes on. Raises InvalidRequest.

    `required` names fields that must be present once defaults are filled (Anthropic's `max_tokens`)."""
    fields = decode_fields(body)
    prompt = _check_messages(fields) if shape == "messages" else _check_input(fields)
    prompt_bytes = prompt + sum(len(fields[name]) for name in PROMPT_FIELDS if name in fields)
    values = {name: _check_field(name, raw, rules[name]) for name, raw in fields.items() if name in rules}
    dirty = False
    if values.get("model") is None:
        fields["model"] = msgspec.Raw(_encoder.encode(defaults.model))
        values["model"] = defaults.model
        dirty = True
    for name, raw in defaults.params.items():
        if name not in fields:
            fields[name] = raw
            if name in rules:
                values[name] = rules[name].decoder.decode(raw)
            dirty = True
    for name in required:
        if (values.get(name) if name in rules else fields.get(name)) is None:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    for name in FALLBACK_FIELDS:
        if fields.pop(name, None) is not None:
            dirty = True
    request = ChatRequest(
        fields=fields,
        body=body,
        model=values["model"],
        stream=bool(values.get("stream")),
        max_tokens=values.get("max_tokens") or values.get("max_completion_tokens") or values.get("max_output_tokens"),
        prompt_bytes=prompt_bytes,
        fallback_models=values.get("fallback_models"),
        dirty=dirty,
    )
    if values.get("fallback_on_rate_limit") is False:
        request.fallback_on_rate_limit = False
    if values.get("fallback_on_error") is False:
        request.fallback_on_error = False
    return request
