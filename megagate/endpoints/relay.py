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

from megagate.asgi import Send
from megagate.core.errors import (
    Format,
    InvalidRequest,
    UpstreamError,
    UpstreamProtocolError,
)
from megagate.core.responses import ToolName, chat_to_responses_answer, responses_to_chat_request
from megagate.core.responses_stream import ChatToResponsesStream
from megagate.core.stream_relay import ChainedStream, StreamRelay, StreamTranslator
from megagate.core.translate import (
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from megagate.core.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
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


def stream_relay(state: RequestState, plan: Plan, error_for: Callable[[bytes], UpstreamError]) -> StreamRelay:
    """The relay for this plan: a translator when the formats differ, none (raw event bytes) when they match."""
    return StreamRelay(plan.client, plan.upstream, _translator(state, plan), error_for)


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
        return ChainedStream(AnthropicToOpenAIStream(model, plan.created, include_usage=True), responses)
    options = state.request.fields.get("stream_options")
    include = msgspec.json.decode(options, type=_IncludeUsage).include_usage if options else False
    return AnthropicToOpenAIStream(model, plan.created, include_usage=include)


async def relay_stream(
    relay: StreamRelay,
    chunks: AsyncIterator[bytes],
    send: Send,
    on_start: Callable[[], None],
    headers: list[tuple[bytes, bytes]] = SSE_HEADERS,
    on_failure: Callable[[UpstreamError], None] = lambda error: None,
) -> None:
    """Relay an SSE answer through `relay`. A failure before the first event is raised (the layers outside may
    retry or fall back); `on_start()` is called just before the first event's headers go out, `on_failure(error)`
    when a stream that had started is ended by our error event."""
    iterator = aiter(chunks)
    done = False
    while not done:
        try:
            output = relay.receive_data(await anext(iterator))
        except StopAsyncIteration:
            output, done = relay.receive_data(b""), True
        except UpstreamError as failure:  # the transport broke: a reset, a read timeout
            output, done = relay.fail(failure), True
        if output.error is not None and not output.data:
            raise output.error  # nothing reached the client yet
        if output.error is not None:
            on_failure(output.error)
        if output.started:
            on_start()
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        if output.data:
            await send({"type": "http.response.body", "body": output.data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
