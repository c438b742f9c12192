"""Request validation and defaults: every rule gives a 400 naming its param; unknown fields survive untouched."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.errors import InvalidRequest
from megagate.core.request import OPENAI_RULES, RequestDefaults, prepare_chat_request, session_of

DEFAULTS = RequestDefaults()
USER = [{"role": "user", "content": "hi"}]


def prepare(body: Any, defaults: RequestDefaults = DEFAULTS) -> Any:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return prepare_chat_request(raw, defaults)


def test_missing_model_gets_the_default() -> None:
    request = prepare({"messages": USER})
    assert request.model == "openai-gpt-oss-120b"
    assert msgspec.json.decode(request.encode())["model"] == "openai-gpt-oss-120b"


def test_untouched_body_is_forwarded_byte_for_byte() -> None:
    raw = b'{"model":"gpt-4",  "messages":[{"role":"user","content":"hi"}], "x": [1.50, "\\u00e9"]}'
    assert prepare(raw).encode() is raw


def test_defaults_table_fills_only_absent_fields() -> None:
    defaults = RequestDefaults.from_values("m", {"temperature": 0.3, "max_tokens": 99}, OPENAI_RULES)
    request = prepare({"messages": USER, "temperature": 1.5}, defaults)
    body = msgspec.json.decode(request.encode())
    assert body["temperature"] == 1.5 and body["max_tokens"] == 99 and request.max_tokens == 99


def test_bad_defaults_table_is_rejected_at_start() -> None:
    with pytest.raises(InvalidRequest):
        RequestDefaults.from_values("m", {"temperature": 9}, OPENAI_RULES)


def test_fallback_fields_are_consumed_and_removed() -> None:
    request = prepare({"messages": USER, "fallback_models": ["b"], "fallback_on_rate_limit": False})
    assert request.fallback_models == ["b"] and request.fallback_on_rate_limit is False
    assert "fallback_models" not in msgspec.json.decode(request.encode())


def test_null_optional_params_are_accepted() -> None:
    assert prepare({"messages": USER, "temperature": None, "max_tokens": None}).max_tokens is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 2.5}, "n"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"stream": 1}, "stream"),
        ({"model": 5}, "model"),
        ({"model": ""}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [1]}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [*USER, {"role": ["user"]}]}, "messages[1].role"),
        ({"messages": [*USER, {"role": None}]}, "messages[1].role"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
        ({"fallback_models": "b"}, "fallback_models"),
    ],
)
def test_invalid_fields_name_their_param(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        prepare({"messages": USER, **extra})
    assert caught.value.param == param and caught.value.status == 400


@pytest.mark.parametrize("role", ["developer", "tool", "function", "system", "critic", "a role from next year"])
def test_roles_megagate_does_not_know_pass_through(role: str) -> None:
    """Which roles exist is the upstream's to judge: any string role is forwarded byte for byte."""
    body = msgspec.json.encode({"messages": [*USER, {"role": role, "content": "x"}], "model": "m"})
    assert prepare(body).encode() == body


def test_largest_int64_max_tokens_is_accepted() -> None:
    assert prepare({"messages": USER, "max_tokens": 2**63 - 1}).max_tokens == 2**63 - 1


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b"42", b'"s"', b"\xff\xfe", b'{"messages": [}'])
def test_malformed_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        prepare(body)


def test_missing_messages() -> None:
    with pytest.raises(InvalidRequest) as caught:
        prepare({"model": "m"})
    assert caught.value.param == "messages"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(extra=st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=5))
def test_unknown_fields_survive_defaults(extra: dict[str, Any]) -> None:
    """Whatever megagate does not own reaches the upstream as the same JSON value."""
    extra = {k: v for k, v in extra.items() if k not in OPENAI_RULES and k != "messages"}
    body = msgspec.json.decode(prepare({"messages": USER, **extra}).encode())
    for name, value in extra.items():
        assert body[name] == value


@pytest.mark.parametrize(
    ("extra", "session"),
    [
        ({"prompt_cache_key": "conv-1"}, "conv-1"),
        ({"metadata": {"user_id": "user_abc_session_1"}}, "user_abc_session_1"),
        ({"prompt_cache_key": "", "metadata": {"user_id": "u"}}, "u"),
        ({"metadata": ["not", "an", "object"]}, None),
        ({"prompt_cache_key": 7}, None),
        ({}, None),
    ],
)
def test_a_conversation_names_itself_for_affinity(extra: dict[str, Any], session: str | None) -> None:
    assert session_of(prepare({"messages": USER, **extra})) == session


def test_token_estimate_is_prompt_over_four_plus_the_completion_budget() -> None:
    request = prepare_chat_request(b'{"messages":[{"role":"user","content":"hello"}],"max_tokens":100}', DEFAULTS)
    assert request.estimated_tokens(1024) == request.prompt_bytes // 4 + 100
    request = prepare_chat_request(b'{"messages":[{"role":"user","content":"hi"}]}', DEFAULTS)
    assert request.estimated_tokens(500) == request.prompt_bytes // 4 + 500
