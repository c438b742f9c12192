"""A MegaLLM stand-in for tests, demos and benchmarks: `python -m megagate.fake --port P`.

Speaks the OpenAI chat format (plain and SSE), Anthropic's `/v1/messages` (see `fake/anthropic.py`), the Responses
API and embeddings (see `fake/responses.py`) and `/v1/models`,
with a configurable time to first token, tokens per
second and answer length. Faults are scripted per request, either in an `x-fake-fault` header (a JSON `Fault`) or
by rules posted to `/_fake/rules` that match on model, key and path (how tests script an upstream behind the
gateway). Every request is recorded (path, key, headers, body) and served at `GET /_fake/requests`.
"""

from __future__ import annotations

import fnmatch
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from megagate.asgi import read_body
from megagate.core.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    Message,
    Model,
    ModelList,
    ModelPricing,
    ToolCall,
)
from megagate.core.usage import ChatUsage, CompletionTokensDetails, PromptTokensDetails
from megagate.fake import anthropic as fake_anthropic
from megagate.fake import responses as fake_responses

WORDS = [
    "megagate",
    "relays",
    "every",
    "token",
    "of",
    "this",
    "answer",
    "as",
    "soon",
    "as",
    "the",
    "fake",
    "upstream",
    "produces",
    "it,",
    "so",
    "you",
    "can",
    "watch",
    "the",
    "stream",
    "arrive",
    "word",
    "by",
    "word",
    "with",
    "no",
    "key",
    "and",
    "no",
    "network",
    "at",
    "all",
]
MODELS = (
    "openai-gpt-oss-120b",
    "gpt-4",
    "gpt-5",
    "claude-opus-4-1-20250805",
    "gemini-2.5-pro",
    "llama3.3-70b-instruct",
)
# USD per million tokens, as MegaLLM's model list gives `pricing` (the last model lists none)
PRICING = {"openai-gpt-oss-120b": (0.15, 0.6), "gpt-4": (30.0, 60.0), "gpt-5": (1.25, 10.0),
           "claude-opus-4-1-20250805": (15.0, 75.0), "gemini-2.5-pro": (1.25, 10.0)}  # fmt: skip

MAX_BODY = 64 * 1024 * 1024
ANSWERED = frozenset(
    {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/embeddings"}
)
OTHER_FORMATS: dict[str, tuple[str, Any, Any]] = {
    "/v1/messages": ("msg_fake", fake_anthropic.stream, fake_anthropic.message),
    "/v1/responses": ("resp_fake", fake_responses.stream, fake_responses.answer),
}
_encoder = msgspec.json.Encoder()
_any = msgspec.json.Decoder(Any)


class Caching(msgspec.Struct, kw_only=True):
    """Prompt caching and reasoning the upstream reports in its usage, as each format says it: OpenAI's
    `cached_tokens` inside `prompt_tokens` (it has no cache writes), Anthropic's `cache_read_input_tokens` and
    `cache_creation_input_tokens` beside `input_tokens` (in `message_start` when streaming), Responses'
    `cached_tokens` inside `input_tokens`."""

    read: int = 0
    write: int = 0
    reasoning: int = 0


class Fault(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What to do instead of (or on the way to) a normal answer."""

    status: int | None = None  # answer with this HTTP error status and an OpenAI error envelope
    retry_after: float | None = None  # with `status`: a Retry-After header
    message: str | None = None
    hang: bool = False  # send nothing until the client gives up
    ttft: float | None = None  # seconds before the response starts
    chunk_delay: float | None = None  # seconds between stream chunks
    length: int | None = None  # words in the answer
    drop_after: int | None = None  # streams: drop the connection after this many content events
    error_after: int | None = None  # streams: send an error event after this many content events
    stall_after: int | None = None  # streams: go silent (connection open) after this many content events
    tool: str | None = (
        None  # call this tool (when offered) instead of the first one, with `tool_input`; "none": no call
    )
    tool_input: dict[str, Any] | None = None
    caching: Caching | None = None  # report prompt caching and reasoning tokens in the usage


class Rule(msgspec.Struct, kw_only=True):
    """Apply `fault` to requests whose model, key and path match (globs; None matches anything)."""

    fault: Fault
    model: str | None = None
    key: str | None = None
    path: str | None = None
    times: int | None = None  # how many requests it applies to; None: all


class Recorded(msgspec.Struct):
    path: str
    key: str | None
    headers: dict[str, str]
    body: Any
    at: float
    client_port: int | None = None
    disconnected_at: float | None = None


class FakeUpstream:
    """The fake as a raw ASGI app."""

    def __init__(self, *, ttft: float = 0.0, tokens_per_second: float = 0.0, length: int = len(WORDS)) -> None:
        self.default = Fault(
            ttft=ttft, chunk_delay=1.0 / tokens_per_second if tokens_per_second else 0.0, length=length
        )
        self.rules: list[Rule] = []
        self.requests: list[Recorded] = []
        self.in_flight: dict[str, int] = {}  # per key: requests being answered now
        self.peak_in_flight: dict[str, int] = {}  # per key: the most at once (how tests see over-admission)
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        body = await read_body(receive, MAX_BODY)
        if path.startswith("/_fake/"):
            await self._control(path, method, body, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        key = _key_of(headers)
        payload = _any.decode(body) if body else None
        client = scope.get("client")
        record = Recorded(path, key, headers, payload, time.monotonic(), client[1] if client else None)
        self.requests.append(record)
        if method == "GET" and path == "/v1/models":
            await _send_json(send, 200, _encoder.encode(ModelList([_listed(m) for m in MODELS])))
            return
        if method != "POST" or path not in ANSWERED or not isinstance(payload, dict):
            await _send_error(send, 404, f"fake upstream: no route {method} {path}")
            return
        fault = self._fault_for(payload, key, path, headers)
        held = key or ""
        self.in_flight[held] = self.in_flight.get(held, 0) + 1
        self.peak_in_flight[held] = max(self.peak_in_flight.get(held, 0), self.in_flight[held])
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_watch_disconnect, receive, record, group.cancel_scope)
                await self._answer(payload, fault, send, path)
                group.cancel_scope.cancel()
        finally:
            self.in_flight[held] -= 1

    def _fault_for(self, payload: dict[str, Any], key: str | None, path: str, headers: dict[str, str]) -> Fault:
        fault = self.default
        if "x-fake-fault" in headers:
            return _overlay(fault, msgspec.json.decode(headers["x-fake-fault"], type=Fault))
        model = str(payload.get("model", ""))
        for rule in self.rules:
            if rule.times == 0:
                continue
            if rule.model is not None and not fnmatch.fnmatchcase(model, rule.model):
                continue
            if rule.key is not None and key != rule.key:
                continue
            if rule.path is not None and not fnmatch.fnmatchcase(path, rule.path):
                continue
            if rule.times is not None:
                rule.times -= 1
            return _overlay(fault, rule.fault)
        return fault

    async def _answer(self, payload: dict[str, Any], fault: Fault, send: Any, path: str) -> None:
        if fault.hang:
            await anyio.sleep_forever()
        if fault.ttft:
            await anyio.sleep(fault.ttft)
        if fault.status is not None:
            extra = [(b"retry-after", f"{fault.retry_after:g}".encode())] if fault.retry_after is not None else []
            text = fault.message or f"fake upstream fault: HTTP {fault.status}"
            if path.startswith("/v1/messages"):
                await _send_json(send, fault.status, fake_anthropic.error_body(fault.status, text), extra)
            else:
                await _send_error(send, fault.status, text, extra)
            return
        model = str(payload.get("model", ""))
        words = answer_words(fault.length)
        if path == "/v1/messages/count_tokens":
            await _send_json(send, 200, fake_anthropic.count_tokens(payload))
            return
        if path == "/v1/embeddings":
            await _send_json(send, 200, fake_responses.embeddings(payload))
            return
        if path in OTHER_FORMATS:  # Anthropic's messages, the Responses API: (id prefix, stream, whole answer)
            prefix, stream, whole = OTHER_FORMATS[path]
            ident = f"{prefix}_{next(self._ids)}"
            if payload.get("stream"):
                await stream(ident, payload, words, fault, send)
            else:
                await _send_json(send, 200, whole(ident, payload, words, fault))
            return
        tool = _first_tool(payload, fault)
        usage = _chat_usage(len(_encoder.encode(payload.get("messages"))) // 4, len(words), fault.caching)
        ident = f"chatcmpl-fake-{next(self._ids)}"
        if payload.get("stream"):
            options = payload.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            await self._stream(ident, model, words, tool, usage if include_usage else None, fault, send)
            return
        if tool is not None:
            message = Message(tool_calls=[ToolCall(id="call_fake_1", type="function", function=FunctionCall(*tool))])
            finish = "tool_calls"
        else:
            message, finish = Message(content="".join(words)), "stop"
        answer = ChatCompletion(ident, int(time.time()), model, [Choice(0, message, finish)], usage)
        await _send_json(send, 200, _encoder.encode(answer))

    async def _stream(
        self,
        ident: str,
        model: str,
        words: list[str],
        tool: tuple[str, str] | None,
        usage: ChatUsage | None,
        fault: Fault,
        send: Any,
    ) -> None:
        created = int(time.time())

        def chunk(delta: Delta, finish: str | None = None, usage: ChatUsage | None = None) -> bytes:
            choices = [ChunkChoice(0, delta, finish)] if usage is None else []
            return b"data: " + _encoder.encode(ChatCompletionChunk(ident, created, model, choices, usage)) + b"\n\n"

        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send(
            {"type": "http.response.body", "body": chunk(Delta(role="assistant", content="")), "more_body": True}
        )
        if tool is not None:
            name, arguments = tool
            first = ToolCall(index=0, id="call_fake_1", type="function", function=FunctionCall(name, ""))
            parts = [Delta(tool_calls=[first])]
            step = max(1, len(arguments) // 3)
            parts += [
                Delta(tool_calls=[ToolCall(index=0, function=FunctionCall(arguments=arguments[i : i + step]))])
                for i in range(0, len(arguments), step)
            ]
            finish = "tool_calls"
        else:
            parts = [Delta(content=word) for word in words]
            finish = "stop"
        for sent, delta in enumerate(parts):
            if fault.drop_after is not None and sent == fault.drop_after:
                raise ConnectionAbortedError("fake upstream: dropping the connection as scripted")
            if fault.error_after is not None and sent == fault.error_after:
                error = {"error": {"message": "fake upstream: scripted stream error", "type": "api_error"}}
                await send({"type": "http.response.body", "body": b"data: " + _encoder.encode(error) + b"\n\n"})
                return
            if fault.stall_after is not None and sent == fault.stall_after:
                await anyio.sleep_forever()
            if fault.chunk_delay:
                await anyio.sleep(fault.chunk_delay)
            await send({"type": "http.response.body", "body": chunk(delta), "more_body": True})
        tail = chunk(Delta(), finish)
        if usage is not None:
            tail += chunk(Delta(), None, usage)
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    async def _control(self, path: str, method: str, body: bytes, send: Any) -> None:
        if path == "/_fake/rules" and method == "POST":
            self.rules.append(msgspec.json.decode(body, type=Rule))
        elif path == "/_fake/rules" and method == "DELETE":
            self.rules.clear()
        elif path == "/_fake/requests" and method == "GET":
            await _send_json(send, 200, _encoder.encode(self.requests))
            return
        elif path == "/_fake/stats" and method == "GET":
            stats = {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}
            await _send_json(send, 200, _encoder.encode(stats))
            return
        elif path == "/_fake/requests" and method == "DELETE":
            self.peak_in_flight.clear()
            self.requests.clear()
        else:
            await _send_error(send, 404, f"fake upstream: no control route {method} {path}")
            return
        await _send_json(send, 200, b"{}")


def answer_words(length: int | None) -> list[str]:
    """The fake's answer as stream deltas: `length` words, each with its following space."""
    count = len(WORDS) if length is None else length
    return [WORDS[i % len(WORDS)] + ("" if i == count - 1 else " ") for i in range(count)]


def _listed(model: str) -> Model:
    if model not in PRICING:
        return Model(id=model)
    given, produced = PRICING[model]
    return Model(id=model, pricing=ModelPricing(given, produced, "USD"))


def _overlay(fault: Fault, given: Fault) -> Fault:
    """`fault` with the fields `given` sets (those it leaves at their defaults keep `fault`'s)."""
    return msgspec.structs.replace(fault, **{name: getattr(given, name) for name in msgspec.to_builtins(given)})


def _first_tool(payload: dict[str, Any], fault: Fault) -> tuple[str, str] | None:
    """Call the tool the fault names (else the first offered), unless the conversation already ends with a tool
    result."""
    tools = payload.get("tools")
    messages = payload.get("messages") or [{}]
    if not tools or payload.get("tool_choice") == "none" or messages[-1].get("role") == "tool":
        return None
    names = [str(t.get("function", {}).get("name", "tool")) for t in tools if isinstance(t, dict)]
    name = fake_anthropic.chosen_tool(names, fault)
    arguments = _encoder.encode(fault.tool_input or fake_anthropic.TOOL_INPUT).decode()
    return (name, arguments) if name is not None else None


def _key_of(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    return headers.get("x-api-key")


async def _watch_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]], record: Recorded, scope: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    record.disconnected_at = time.monotonic()
    scope.cancel()


async def _send_json(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    kind = {401: "authentication_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "api_error")
    body = _encoder.encode({"error": {"message": message, "type": kind, "param": None, "code": None}})
    await _send_json(send, status, body, extra)


def _chat_usage(prompt: int, output: int, caching: Caching | None) -> ChatUsage:
    read, reasoning = (caching.read, caching.reasoning) if caching else (0, 0)
    return ChatUsage(prompt_tokens=prompt + read, completion_tokens=output, total_tokens=prompt + read + output,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=read),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning))  # fmt: skip
