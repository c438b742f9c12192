"""How an upstream's answer reaches the client in the client's own format, plain or streamed.

A `Plan` says which format each side speaks and what body to send. When they match, a plain body is passed on as
is; otherwise it is translated. A stream is a short loop around `core.stream_relay.StreamRelay`, which makes every
decision (what to send, when the answer started, when and how it ended or failed); this module only does the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from megagate.asgi import Send
from megagate.core.errors import (
    Format,
    InvalidRequest,
    UpstreamError,
    UpstreamProtocolError,
)
from megagate.core.stream_relay import StreamRelay, StreamTranslator
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


def translate_plain(payload: bytes, plan: Plan) -> bytes:
    if not plan.translated:
        return payload
    try:
        if plan.upstream == "openai":
            return openai_to_anthropic_response(payload)
        return anthropic_to_openai_response(payload, plan.created)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(f"upstream answer could not be translated ({exc})") from None


def stream_relay(state: RequestState, plan: Plan, error_for: Callable[[bytes], UpstreamError]) -> StreamRelay:
    """The relay for this plan: a translator when the formats differ, none (raw event bytes) when they match."""
    translator: StreamTranslator | None = None
    if plan.translated and plan.upstream == "openai":
        translator = OpenAIToAnthropicStream(state.request.model)
    elif plan.translated:
        options = state.request.fields.get("stream_options")
        include = msgspec.json.decode(options, type=_IncludeUsage).include_usage if options else False
        translator = AnthropicToOpenAIStream(state.request.model, plan.created, include_usage=include)
    return StreamRelay(plan.client, plan.upstream, translator, error_for)


async def relay_stream(
    relay: StreamRelay, chunks: AsyncIterator[bytes], send: Send, on_start: Callable[[], None]
) -> None:
    """Relay an SSE answer through `relay`. A failure before the first event is raised (the layers outside may
    retry or fall back); `on_start()` is called just before the first event's headers go out."""
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
        if output.started:
            on_start()
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        if output.data:
            await send({"type": "http.response.body", "body": output.data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
