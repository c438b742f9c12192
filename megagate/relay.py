"""How an upstream's answer reaches the client in the client's own format, plain or streamed.

A `Plan` says which format each side speaks. When they match, a plain body is passed on as is and a stream as the
raw bytes of complete SSE events (no re-encoding, the hot path); when they differ, the body is translated and each
event goes through a `core.translate_stream` state machine. Either way the relay reads usage, recognises the
end of the stream (`[DONE]` or `message_stop`) and an error event, and ends a stream that fails after it started
with an error event in the client's format, never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from megagate.asgi import Send
from megagate.core import anthropic
from megagate.core.errors import (
    Format,
    InvalidRequest,
    MegagateError,
    UpstreamError,
    UpstreamProtocolError,
    render_error,
)
from megagate.core.schemas import Usage, read_usage
from megagate.core.sse import ServerSentEvent, SSEDecoder
from megagate.core.translate import (
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from megagate.core.translate_stream import DONE, AnthropicToOpenAIStream, OpenAIToAnthropicStream
from megagate.routing import Target
from megagate.state import RequestState

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # ask nginx & co. not to buffer the stream
]

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

    @property
    def translated(self) -> bool:
        return self.client != self.upstream


def make_plan(state: RequestState, target: Target, created: int) -> Plan:
    """What to send where: the request as is, or translated into the upstream's format."""
    client, upstream = state.format, target.format
    body = state.request.encode()
    if client != upstream:
        decoded = _any.decode(body)
        translate = anthropic_to_openai_request if client == "anthropic" else openai_to_anthropic_request
        try:
            translated = translate(decoded)
        except (AttributeError, TypeError, KeyError, ValueError):
            # Validation owns only what megagate needs, so a field of the wrong shape (a message's content a
            # number, a tool without its function) reaches the translator; it is the request's fault, told as such.
            name = "OpenAI" if upstream == "openai" else "Anthropic"
            raise InvalidRequest(
                f"The request could not be translated to the {name} format of the upstream serving "
                f"'{state.request.model}': a message, content block or tool has an unexpected shape."
            ) from None
        body = _encoder.encode(translated)
    return Plan(client, upstream, target.path, body, created)


def usage_of(data: bytes, fmt: Format) -> Usage | None:
    """Usage from an answer or event in format `fmt`, as OpenAI counts it."""
    if fmt == "openai":
        return read_usage(data)
    usage = anthropic.read_usage(data)
    if usage is None:
        return None
    return Usage(usage.input_tokens, usage.output_tokens, usage.input_tokens + usage.output_tokens)


def translate_plain(payload: bytes, plan: Plan) -> bytes:
    if not plan.translated:
        return payload
    try:
        if plan.upstream == "openai":
            return openai_to_anthropic_response(payload)
        return anthropic_to_openai_response(payload, plan.created)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(f"upstream answer could not be translated ({exc})") from None


def stream_error_event(error: MegagateError, fmt: Format = "openai") -> bytes:
    """A final SSE error event in the client's format (OpenAI's then `[DONE]`), to end a stream that failed."""
    if fmt == "anthropic":
        return b"event: error\ndata: " + render_error(error, "anthropic") + b"\n\n"
    return b"data: " + render_error(error) + b"\n\n" + DONE


def is_error_event(event: ServerSentEvent, fmt: Format) -> bool:
    if fmt == "anthropic":
        return event.event == "error"
    return event.data.lstrip().startswith(b'{"error"')


def is_end_event(event: ServerSentEvent, fmt: Format) -> bool:
    if fmt == "anthropic":
        return event.event == "message_stop"
    return event.data == b"[DONE]"


def _translator(plan: Plan, state: RequestState) -> OpenAIToAnthropicStream | AnthropicToOpenAIStream | None:
    if not plan.translated:
        return None
    if plan.upstream == "openai":
        return OpenAIToAnthropicStream(state.request.model)
    options = state.request.fields.get("stream_options")
    include = msgspec.json.decode(options, type=_IncludeUsage).include_usage if options else False
    return AnthropicToOpenAIStream(state.request.model, plan.created, include_usage=include)


async def relay_stream(
    state: RequestState, plan: Plan, waiting: anyio.CancelScope, chunks: Any, send: Send, error_for: Any
) -> None:
    """Relay an SSE answer. Before the first event is relayed any failure is raised (the layers outside may retry
    or fall back); after it, the stream is ended with an error event. `error_for(data)` builds the error an
    upstream error event stands for."""
    decoder = SSEDecoder()
    translator = _translator(plan, state)
    upstream = plan.upstream
    started = ended = False
    try:
        async for chunk in chunks:
            complete, events = decoder.receive_data(chunk)
            if not events and not started:
                continue  # comments or partial events: hold them until there is a real first event
            if b'"usage"' in complete:
                for event in events:
                    state.usage = usage_of(event.data, upstream) or state.usage
            if translator is None:
                if not started and is_error_event(events[0], upstream):
                    raise error_for(events[0].data)
                # an error event the upstream sent after the start also ends the stream: the client has been told
                ended = ended or (
                    bool(events) and (is_end_event(events[-1], upstream) or is_error_event(events[-1], upstream))
                )
                out = complete
            else:
                out = _translate_events(events, translator, upstream, error_for)
                ended = ended or translator.finished
            if not started:
                started = True
                waiting.deadline = math.inf  # the first-byte timeout is over
                state.response_started = True
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        rest, _ = decoder.receive_data(b"")
        if not started:
            raise UpstreamProtocolError("upstream closed the stream before sending an event")
        if not ended:
            raise UpstreamProtocolError("upstream ended the stream early; the answer may be incomplete")
    except UpstreamError as failure:
        if not started:
            raise
        # Bytes already reached the client: it cannot be retried, so end it visibly, never as a success.
        await send({"type": "http.response.body", "body": stream_error_event(failure, plan.client), "more_body": False})
        return
    await send({"type": "http.response.body", "body": rest if translator is None else b"", "more_body": False})


def _translate_events(events: list[ServerSentEvent], translator: Any, upstream: Format, error_for: Any) -> bytes:
    out = []
    for event in events:
        if is_error_event(event, upstream):
            raise error_for(event.data)
        if not event.data:
            continue
        try:
            out.append(translator.feed(event.data))
        except msgspec.DecodeError as exc:
            raise UpstreamProtocolError(f"upstream sent an event that could not be translated ({exc})") from None
    return b"".join(out)
