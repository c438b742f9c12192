"""Bad and hostile input against a real hypercorn process: every case costs one clear 4xx (in the route's envelope
whenever megagate is the one answering) and the server keeps answering; a hypothesis fuzz of the whole request
path finds no 500."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megagate.app import Gateway
from megagate.config import config_from_mapping
from tests.conftest import FakeControl, Process, gateway_toml, start_gateway
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

OK_CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def hostile_gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    extra = "body_timeout = 1.0\nmax_body_bytes = 1048576\n"
    process = start_gateway(tmp_path_factory.mktemp("hostile"), gateway_toml(fake_upstream.url, extra=extra))
    yield process
    process.stop()


def exchange(port: int, request: bytes, *, drip: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes (then `drip`, slowly), read one response: (status, body). Status 0: closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        for byte in drip:
            readable, _, _ = select.select([sock], [], [], 0.2)  # a byte every 0.2 s, until the server answers
            if readable:
                break
            sock.sendall(bytes([byte]))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head.split(b" ")[1]), body


def post(path: str, body: bytes, content_type: bytes | None = b"application/json", extra: bytes = b"") -> bytes:
    headers = b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
    if content_type is not None:
        headers += b"content-type: " + content_type + b"\r\n"
    return headers + extra + b"\r\n" + body


def chat(body: Any) -> bytes:
    return post("/v1/chat/completions", body if isinstance(body, bytes) else json.dumps(body).encode())


def messages(body: Any) -> bytes:
    return post("/v1/messages", body if isinstance(body, bytes) else json.dumps(body).encode())


def with_messages(**fields: Any) -> dict[str, Any]:
    return {**OK_CHAT, **fields}


# fmt: off
CASES: dict[str, tuple[bytes, int, str]] = {
    # name: (raw request, expected status, envelope: "openai" | "anthropic")
    "truncated json": (chat(b'{"model":"gpt-4","messages":['), 400, "openai"),
    "empty body": (chat(b""), 400, "openai"),
    "null": (chat(b"null"), 400, "openai"),
    "array": (chat(b"[]"), 400, "openai"),
    "string": (chat(b'"hi"'), 400, "openai"),
    "number": (chat(b"42"), 400, "openai"),
    "unquoted keys": (chat(b"{model: gpt}"), 400, "openai"),
    "trailing garbage": (chat(json.dumps(OK_CHAT).encode() + b" x"), 400, "openai"),
    "invalid utf-8": (chat(b'{"messages":[{"role":"user","content":"\xff\xfe"}]}'), 400, "openai"),
    "byte order mark": (chat(b"\xef\xbb\xbf" + json.dumps(OK_CHAT).encode()), 400, "openai"),
    "NaN literal": (chat(b'{"messages":[{"role":"user","content":"x"}],"temperature":NaN}'), 400, "openai"),
    "huge number": (chat(b'{"messages":[{"role":"user","content":"x"}],"temperature":1e999999}'), 400, "openai"),
    "no messages": (chat({"model": "gpt-4"}), 400, "openai"),
    "messages a string": (chat(with_messages(messages="hi")), 400, "openai"),
    "messages empty": (chat(with_messages(messages=[])), 400, "openai"),
    "message a string": (chat(with_messages(messages=["hi"])), 400, "openai"),
    "role a number": (chat(with_messages(messages=[{"role": 7, "content": "x"}])), 400, "openai"),
    "role an object": (chat(with_messages(messages=[{"role": {"name": "user"}, "content": "x"}])), 400, "openai"),
    "missing role": (chat(with_messages(messages=[{"content": "x"}])), 400, "openai"),
    "model a number": (chat(with_messages(model=123)), 400, "openai"),
    "model empty": (chat(with_messages(model="")), 400, "openai"),
    "temperature a string": (chat(with_messages(temperature="hot")), 400, "openai"),
    "temperature too high": (chat(with_messages(temperature=5)), 400, "openai"),
    "temperature a boolean": (chat(with_messages(temperature=True)), 400, "openai"),
    "top_p above 1": (chat(with_messages(top_p=1.5)), 400, "openai"),
    "n zero": (chat(with_messages(n=0)), 400, "openai"),
    "n huge": (chat(with_messages(n=100)), 400, "openai"),
    "max_tokens zero": (chat(with_messages(max_tokens=0)), 400, "openai"),
    "max_tokens negative": (chat(with_messages(max_tokens=-1)), 400, "openai"),
    "max_tokens fractional": (chat(with_messages(max_tokens=1.5)), 400, "openai"),
    "max_tokens a huge string": (chat(with_messages(max_tokens="9" * 100_000)), 400, "openai"),
    "stream a string": (chat(with_messages(stream="yes")), 400, "openai"),
    "presence_penalty out of range": (chat(with_messages(presence_penalty=3)), 400, "openai"),
    "frequency_penalty a string": (chat(with_messages(frequency_penalty="x")), 400, "openai"),
    "fallback_models a string": (chat(with_messages(fallback_models="gpt-5")), 400, "openai"),
    "fallback_models numbers": (chat(with_messages(fallback_models=[1, 2])), 400, "openai"),
    "fallback_on_error a string": (chat(with_messages(fallback_on_error="no")), 400, "openai"),
    "duplicate keys, last one bad": (
        chat(b'{"model":"gpt-4","model":5,"messages":[{"role":"user","content":"x"}]}'),
        400,
        "openai",
    ),
    "deep nesting": (chat(b'{"messages":' + b"[" * 200_000 + b"]" * 200_000 + b"}"), 400, "openai"),
    "oversized body": (chat(b'{"messages":[{"role":"user","content":"' + b"x" * 2_000_000 + b'"}]}'), 413, "openai"),
    "text/plain": (post("/v1/chat/completions", json.dumps(OK_CHAT).encode(), b"text/plain"), 400, "openai"),
    "form-urlencoded": (post("/v1/chat/completions", b"a=b", b"application/x-www-form-urlencoded"), 400, "openai"),
    "xml": (post("/v1/chat/completions", b"<chat/>", b"application/xml"), 400, "openai"),
    "GET on a POST route": (b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n", 405, "openai"),
    "unknown route": (post("/v1/nothing", b"{}"), 404, "openai"),
    "anthropic: no max_tokens": (messages({k: v for k, v in MESSAGES.items() if k != "max_tokens"}), 400, "anthropic"),
    "anthropic: a role that is not a string": (
        messages({**MESSAGES, "messages": [{"role": ["user"], "content": "x"}]}),
        400,
        "anthropic",
    ),
    "anthropic: temperature 1.5": (messages({**MESSAGES, "temperature": 1.5}), 400, "anthropic"),
    "anthropic: truncated json": (messages(b'{"model":"claude-x","max_tokens":1,'), 400, "anthropic"),
    "anthropic: stop_sequences a string": (messages({**MESSAGES, "stop_sequences": "END"}), 400, "anthropic"),
    "anthropic: top_k negative": (messages({**MESSAGES, "top_k": -1}), 400, "anthropic"),
    "anthropic: oversized": (
        messages(b'{"model":"x","max_tokens":1,"messages":"' + b"y" * 2_000_000 + b'"}'),
        413,
        "anthropic",
    ),
    "anthropic: unknown sub-route": (post("/v1/messages/batches", b"{}"), 404, "anthropic"),
    "many small headers": (
        post("/v1/chat/completions", b"[]", extra=b"".join(b"x-junk-%d: v\r\n" % i for i in range(300))),
        400,
        "openai",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_clear_4xx_in_the_routes_envelope(hostile_gateway: Process, name: str) -> None:
    request, expected, fmt = CASES[name]
    status, body = exchange(hostile_gateway.port, request)
    assert status == expected, body[:300]
    decoded = msgspec.json.decode(body)
    if fmt == "anthropic":
        assert decoded["type"] == "error" and decoded["error"]["message"]
    else:
        assert set(decoded["error"]) == {"message", "type", "param", "code"} and decoded["error"]["message"]


def test_a_slow_drip_body_gets_408_within_the_body_timeout(hostile_gateway: Process) -> None:
    body = json.dumps(OK_CHAT).encode()
    started = time.monotonic()
    status, answer = exchange(hostile_gateway.port, chat(body)[: -len(body)], drip=body)
    assert status == 408 and time.monotonic() - started < 3
    assert "did not arrive" in msgspec.json.decode(answer)["error"]["message"]


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + b"x-flood: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
         400),
        (b"NONSENSE\r\n\r\n", 400),
    ],
    ids=["header flood", "bad chunked framing", "not HTTP"],
)
def test_protocol_garbage_is_refused_by_the_server(
    hostile_gateway: Process, request_bytes: bytes, expected: int
) -> None:
    """hypercorn (h11) answers these itself, before megagate sees a request: each its own 4xx, no crash."""
    status, _ = exchange(hostile_gateway.port, request_bytes)
    assert status == expected


def test_the_server_still_answers_after_all_of_it(hostile_gateway: Process, fake: FakeControl) -> None:
    for name, (request, expected, _) in CASES.items():
        assert exchange(hostile_gateway.port, request)[0] == expected, name
    status, body = exchange(hostile_gateway.port, chat(OK_CHAT))
    assert status == 200 and msgspec.json.decode(body)["choices"]


# --- fuzz -------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "messages", "temperature", "top_p", "n", "max_tokens", "stream", "stop", "tools",
          "fallback_models", "fallback_on_error", "system", "top_k", "stop_sequences", "stream_options"]  # fmt: skip
messages_values = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]), "content": json_values}
    ),
    max_size=3,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(msgspec.json.encode),
    st.fixed_dictionaries({"messages": messages_values}, optional={f: json_values for f in FIELDS[2:]}).map(
        msgspec.json.encode
    ),
)


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"]))
async def test_fuzzed_requests_never_get_a_500(
    fake_upstream: Process, fake: FakeControl, body: bytes, path: str
) -> None:
    upstream = {"name": "fake", "base_url": fake_upstream.url, "keys": ["sk-fuzz-key-0001"], "format": "both"}
    config = config_from_mapping({"access_log": False, "timeouts": {"total": 5}, "upstreams": [upstream]})
    gateway = Gateway(config)
    recorder = Recorder()
    try:
        await gateway(http_scope(path), receiver(body), recorder)
    finally:
        await gateway.aclose()
    assert recorder.status < 500 or recorder.status in (502, 504), recorder.body[:300]
    decoded = msgspec.json.decode(recorder.body)
    if recorder.status >= 400:
        assert decoded["error"]["message"]
