"""How an upstream's answer reaches the client in the client's own format, plain or streamed.

A `Plan` says which format each side speaks and what body to send. When they match, a plain body is passed on as
is; otherwise it is translated. A stream is a short loop around `core.stream_relay.StreamRelay`, which makes every
decision (what to send, when the answer started, when and how it ended or failed); this module only does the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from megagate.asgi import Headers, Send, send_json
from megagate.core.errors import Format, InvalidRequest, UpstreamError, UpstreamProtocolError
from megagate.core.pricing import PriceTable
from megagate.core.responses import ToolName, chat_to_responses_answer, responses_to_chat_request
from megagate.core.responses_stream import ChatToResponsesStream
from megagate.core.stream_relay import AnthropicToResponsesStream, StreamRelay, StreamTranslator
from megagate.core.translate import (
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from megagate.core.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from megagate.core.usage import Usage
from megagate.routing import Target
from megagate.state import RequestState

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # ask nginx & co. not to buffer the stream
]

DROPPED_TOOLS_HEADER = b"x-megagate-dropped-tools"
_any = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


class _IncludeUsage(msgspec.Struct):
    include_usage: bool = False


@dataclass(slots=True)
class Plan:
    client: Format
    upstream: Format
    path: bytes
    body: bytes
    created: int  # Unix time stamped on translated OpenAI answers
    tools: dict[str, ToolName] = field(default_factory=dict)  # Responses clients: chat tool names mapped back
    dropped_tools: list[str] = field(default_factory=list)  # hosted tools the upstream cannot run, left out
    hide_usage: bool = False  # usage asked of the upstream for megagate's count only: the client did not ask

    @property
    def translated(self) -> bool:
        return self.client != self.upstream


def _translate_request(client: Format, upstream: Format, decoded: Any, plan: Plan) -> Any:
    if client == "responses":
        chat = responses_to_chat_request(decoded)
        plan.tools, plan.dropped_tools = chat.tools, chat.dropped_tools
        return openai_to_anthropic_request(chat.body) if upstream == "anthropic" else chat.body
    if client == "anthropic":
        return anthropic_to_openai_request(decoded)
    return openai_to_anthropic_request(decoded)


def make_plan(state: RequestState, target: Target, created: int) -> Plan:
    """What to send where: the request as is, or translated into the upstream's format."""
    client, upstream = state.format, target.format
    plan = Plan(client, upstream, target.path, state.request.encode(), created)
    if client == upstream == "openai" and state.request.stream and state.endpoint.operation == "chat":
        _ask_for_usage(state, plan)
    if client == upstream:  # token counts and embeddings are only ever routed to their own format
        return plan
    try:
        translated = _translate_request(client, upstream, _any.decode(plan.body), plan)
    except (AttributeError, TypeError, KeyError, ValueError):
        # Validation owns only what megagate needs, so a field of the wrong shape (a message's content a number,
        # a tool without its function) reaches the translator; it is the request's fault, told as such.
        raise InvalidRequest(
            f"The request could not be translated to the {upstream} format of the upstream serving "
            f"'{state.request.model}': a message, content block or tool has an unexpected shape."
        ) from None
    plan.body = _encoder.encode(translated)
    return plan


def _ask_for_usage(state: RequestState, plan: Plan) -> None:
    """Every stream is counted: a chat stream whose client did not ask for `include_usage` asks for it upstream
    (the client's other `stream_options` kept), and the usage chunk is kept from the client (`hide_usage`)."""
    given = state.request.fields.get("stream_options")
    try:
        options = _any.decode(given) if given is not None else {}
    except msgspec.ValidationError:
        return  # not an object: the upstream judges it as the client sent it
    if options.get("include_usage") is True:
        return
    fields = {
        **state.request.fields,
        "stream_options": msgspec.Raw(_encoder.encode({**options, "include_usage": True})),
    }
    plan.body, plan.hide_usage = _encoder.encode(fields), True


def translate_plain(payload: bytes, plan: Plan) -> bytes:
    if not plan.translated:
        return payload
    try:
        if plan.client == "responses":
            chat = anthropic_to_openai_response(payload, plan.created) if plan.upstream == "anthropic" else payload
            return chat_to_responses_answer(chat, plan.tools, plan.created)
        if plan.upstream == "openai":
            return openai_to_anthropic_response(payload)
        return anthropic_to_openai_response(payload, plan.created)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(f"upstream answer could not be translated ({exc})") from None


def told_headers(plan: Plan) -> list[tuple[bytes, bytes]]:
    """Response headers saying what the translation left out (hosted tools the upstream cannot run)."""
    return [(DROPPED_TOOLS_HEADER, ", ".join(plan.dropped_tools).encode())] if plan.dropped_tools else []


def stream_for(state: RequestState, plan: Plan, error_for: Callable[[bytes], UpstreamError]) -> StreamRelay:
    """The sans-I/O relay of this plan's stream: a translator when the formats differ, none (the upstream's event
    bytes as they came) when they match. `error_for(data)` builds the error an upstream error event stands for."""
    return StreamRelay(plan.client, plan.upstream, _translator(state, plan), error_for, hide_usage=plan.hide_usage)


def _translator(state: RequestState, plan: Plan) -> StreamTranslator | None:
    if not plan.translated:
        return None
    model = state.request.model
    if plan.client == "anthropic":
        return OpenAIToAnthropicStream(model)
    if plan.client == "responses":
        responses = ChatToResponsesStream(model, plan.created, plan.tools)
        if plan.upstream == "openai":
            return responses
        return AnthropicToResponsesStream(AnthropicToOpenAIStream(model, plan.created), responses)
    options = state.request.fields.get("stream_options")
    include = msgspec.json.decode(options, type=_IncludeUsage).include_usage if options else False
    return AnthropicToOpenAIStream(model, plan.created, include_usage=include)


class Relay:
    """What the client is sent for one attempt, plain or streamed (the `state.ClientAnswer` of the request): the one
    writer of whether the answer has started, of its usage, and of the terminal event of a stream that breaks after
    it started. Streams go through the sans-I/O `core.stream_relay.StreamRelay`, which makes every decision; this
    class only does the I/O. `on_start()` is called just before the answer's first byte (its headers) goes out."""

    def __init__(
        self,
        send: Send,
        on_start: Callable[[], None] = lambda: None,
        *,
        prices: PriceTable | None = None,
        model: str | None = None,
    ) -> None:
        self.send = send
        self.on_start = on_start
        self.prices = prices  # what `model`'s tokens cost (None: nothing is priced here)
        self.model = model
        self.stream: StreamRelay | None = None
        self.started = False
        self.closed = False  # the last body message went out
        self.usage: Usage | None = None
        self.failure: str | None = None
        self._priced: tuple[Usage | None, float | None] | None = None  # (the usage, its cost) once worked out

    @property
    def cost(self) -> float | None:
        """USD for the usage so far (0 when nothing was counted); None when the model has no price (never $0).
        Worked out once per usage: the header, the metrics, the log, the ledger and the budgets all ask."""
        if self._priced is None or self._priced[0] is not self.usage:
            self._priced = (self.usage, self.prices.cost(self.model, self.usage) if self.prices is not None else None)
        return self._priced[1]

    async def plain(self, status: int, payload: bytes, headers: Headers, usage: Usage | None) -> None:
        """A whole answer, sent at once (with its cost in `x-megagate-cost-usd` when it is priced)."""
        self.usage = usage
        self.started = True
        self.on_start()
        if (cost := self.cost) is not None:
            headers = [*headers, (b"x-megagate-cost-usd", f"{cost:.8f}".encode())]
        await send_json(self.send, status, payload, headers)
        self.closed = True

    async def relay(
        self, stream: StreamRelay, chunks: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Relay an SSE answer through `stream`. A failure before the first event is raised (the layers outside may
        retry or fall back); after it, the stream ends with its format's error event."""
        self.stream = stream
        iterator = aiter(chunks)
        done = False
        try:
            while not done:
                try:
                    output = stream.receive_data(await anext(iterator))
                except StopAsyncIteration:
                    output, done = stream.receive_data(b""), True
                except UpstreamError as failure:  # the transport broke: a reset, a read timeout
                    output, done = stream.fail(failure), True
                if output.error is not None and not output.data:
                    raise output.error  # nothing reached the client yet
                if output.error is not None:
                    self.failure = output.error.message
                if output.started:
                    self.started = True
                    self.on_start()
                    await self.send({"type": "http.response.start", "status": 200, "headers": headers})
                if output.data:
                    await self.send({"type": "http.response.body", "body": output.data, "more_body": True})
        finally:
            self.usage = stream.usage
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        self.closed = True

    async def end(self, error: UpstreamError) -> None:
        """End a stream that started and was then cut from outside (the request deadline): its own terminal event
        (a Responses stream's `response.failed` with its id and next sequence number), then the end of the body."""
        if not self.started or self.closed:
            return
        self.closed = True
        data = b""
        if self.stream is not None:
            output = self.stream.fail(error)
            data = output.data
            if output.error is not None:
                self.failure = error.message
        await self.send({"type": "http.response.body", "body": data, "more_body": False})
