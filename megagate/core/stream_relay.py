"""The stream relay's decisions, sans-I/O: upstream SSE bytes in, the bytes to send the client out.

Theory of operation. `StreamRelay.receive_data(chunk)` feeds the SSE decoder and returns an `Output`: the bytes to
send now (the complete events' own bytes on a same-format stream, no re-encoding; translated events otherwise),
whether this output *starts* the answer (its first event: the caller sends the response headers first and its
first-byte timeout ends), whether the stream has *ended* as its protocol says (`[DONE]`, `message_stop`), the
usage seen, and an `error`. `receive_data(b"")` is end of input, as in h11.

Errors and when a stream has started are decided here and only here:
- before the first event, a failure (an upstream error event, a close with no event) is returned as `error` with
  nothing to send: the layers outside may still retry on another key or fall back to another model;
- after it, a failure cannot be retried (the client has bytes): the output carries a final error event in the
  client's format and `ended`, so every input ends in a well-formed stream or in our own error event, never a
  silent cut. An upstream error event seen after the start is relayed as it is (it already tells the client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from megagate.core.errors import Format, MegagateError, UpstreamError, UpstreamProtocolError, render_error
from megagate.core.responses import response_object
from megagate.core.responses_stream import ChatToResponsesStream, failed_response, responses_event
from megagate.core.sse import ServerSentEvent, SSEDecoder
from megagate.core.translate_stream import DONE, AnthropicToOpenAIStream
from megagate.core.usage import Usage, read_usage

HELD_LIMIT = 64 * 1024  # comment bytes kept for the first event; keep-alives past it carry nothing worth keeping


class StreamTranslator(Protocol):
    """A `core.translate_stream` state machine: one upstream event's data in, client-format SSE bytes out."""

    @property
    def finished(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...

    def fail(self, error: MegagateError) -> bytes | None:
        """The terminal event for a stream that broke after it started, or None for the format's generic one."""
        ...


class AnthropicToResponsesStream:
    """Anthropic events → chat chunks → Responses events, chained on structs: each upstream event is decoded once
    (by the first translator), each chat chunk passes on as a struct, each Responses event is encoded once."""

    def __init__(self, first: AnthropicToOpenAIStream, second: ChatToResponsesStream) -> None:
        self.first = first
        self.second = second

    @property
    def finished(self) -> bool:
        return self.second.finished

    def feed(self, data: bytes) -> bytes:
        return b"".join(self.second.feed_chunk(chunk) for chunk in self.first.events(data))

    def fail(self, error: MegagateError) -> bytes | None:
        return self.second.fail(error)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field, per chunk
class Output:
    data: bytes = b""  # send these to the client now
    started: bool = False  # `data` holds the answer's first event: send the response headers before it
    ended: bool = False  # the stream is over (complete, or closed by our error event in `data`)
    error: UpstreamError | None = None  # the upstream failed; before the start, raise it (nothing was sent)


class _ResponseId(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    created_at: int | None = None


class _ResponsesEventView(msgspec.Struct):
    sequence_number: int | None = None
    response: _ResponseId | None = None


_responses_event_view = msgspec.json.Decoder(_ResponsesEventView)


class ResponsesTrail:
    """What a Responses stream relayed untranslated has said about itself (its response's id, model and creation
    time, the last sequence number), so that megagate's own `response.failed` continues it instead of starting
    another response. Only a same-format Responses stream pays for it: a small view decoded per event."""

    def __init__(self) -> None:
        self.id = "resp_megagate"
        self.model = ""
        self.created = 0
        self.next_sequence = 0

    def see(self, data: bytes) -> None:
        try:
            view = _responses_event_view.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if view.sequence_number is not None:
            self.next_sequence = view.sequence_number + 1
        if view.response is not None:
            self.id = view.response.id or self.id
            self.model = view.response.model or self.model
            self.created = view.response.created_at or self.created


def stream_error_event(error: MegagateError, fmt: Format, trail: ResponsesTrail | None = None) -> bytes:
    """A final SSE error event in the client's format (OpenAI's then `[DONE]`; the Responses API's
    `response.failed`, continuing the response `trail` has seen), to end a stream that failed."""
    if fmt == "anthropic":
        return b"event: error\ndata: " + render_error(error, "anthropic") + b"\n\n"
    if fmt == "responses":
        trail = trail or ResponsesTrail()
        response = failed_response(error, response_object(trail.id, trail.model, trail.created, [], "failed", None))
        return responses_event("response.failed", {"sequence_number": trail.next_sequence, "response": response})
    return b"data: " + render_error(error) + b"\n\n" + DONE


def usage_of(data: bytes, fmt: Format, before: Usage | None = None) -> Usage | None:
    """`before` with what an answer or event in format `fmt` says of its usage (kind by kind: Anthropic's
    message_delta keeps message_start's input count), or `before` when it says nothing."""
    report = read_usage(data, fmt)
    if report is None:
        return before
    return before.merged(report) if before is not None else Usage.of(report)


def _without_usage_chunks(events: list[ServerSentEvent]) -> tuple[bytes, list[ServerSentEvent]]:
    """OpenAI chat events without the usage-only chunks (`"choices": []`), as bytes again: run only on the one
    piece of a stream that carries usage."""
    kept = [e for e in events if not _usage_only(e.data)]
    return b"".join(b"data: " + e.data + b"\n\n" for e in kept), kept


def _usage_only(data: bytes) -> bool:
    if b'"usage"' not in data:
        return False
    try:
        return _choices_view.decode(data).choices == []
    except msgspec.DecodeError:
        return False  # not ours to judge: it goes to the client as it came


class _ChoicesView(msgspec.Struct):
    choices: list[Any] | None = None


_choices_view = msgspec.json.Decoder(_ChoicesView)


RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def is_error_event(event: ServerSentEvent, fmt: Format) -> bool:
    if fmt == "anthropic":
        return event.event == "error"
    if fmt == "responses":
        return event.event in ("error", "response.failed")
    return event.data.lstrip().startswith(b'{"error"')


def is_end_event(event: ServerSentEvent, fmt: Format) -> bool:
    if fmt == "anthropic":
        return event.event == "message_stop"
    if fmt == "responses":
        return event.event in RESPONSES_ENDS
    return event.data == b"[DONE]"


class StreamRelay:
    """One upstream stream relayed to one client. `error_for(data)` builds the error an upstream error event's
    data stands for (the caller knows which secrets to scrub from it)."""

    def __init__(
        self,
        client: Format,
        upstream: Format,
        translator: StreamTranslator | None,
        error_for: Callable[[bytes], UpstreamError],
        *,
        hide_usage: bool = False,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.translator = translator
        self.error_for = error_for
        self.hide_usage = hide_usage  # the usage chunk was asked for megagate's count, not by the client: drop it
        self.decoder = SSEDecoder()
        self.started = False
        self.ended = False
        self.usage: Usage | None = None
        self.held = b""  # bytes before the first event (comments, keep-alives), up to HELD_LIMIT
        # a Responses stream relayed as it came: what it said of itself, for our terminal event
        self.trail = ResponsesTrail() if translator is None and client == "responses" else None

    def receive_data(self, chunk: bytes) -> Output:
        """Feed upstream bytes (b"" at the end of input); get what to do."""
        at_eof = not chunk
        events: list[ServerSentEvent] = []
        try:
            if at_eof:  # the spec discards an unterminated event; sent on, it would also garble our error event
                self.decoder.receive_data(b"")
                complete = b""
            else:
                complete, events = self.decoder.receive_data(chunk)  # raises past the decoder's event-size bound
        except UpstreamError as oversized:
            return self.fail(oversized)
        if self.ended:  # past the end, a same-format upstream's bytes still pass as they came; nothing else
            return Output(complete if self.translator is None else b"", ended=True)
        if b'"usage"' in complete:
            for event in events:
                self.usage = usage_of(event.data, self.upstream, self.usage)
            if self.hide_usage:
                complete, events = _without_usage_chunks(events)
        data, failure = self._client_bytes(complete, events)
        if at_eof and failure is None and not self.ended:
            failure = UpstreamProtocolError(
                "upstream ended the stream early; the answer may be incomplete"
                if self.started
                else "upstream closed the stream before sending an event"
            )
        if not data:
            return self.fail(failure) if failure is not None else Output()
        starts = not self.started
        self.started = True
        if failure is not None:  # what came before the failure still goes out, as it would in an earlier chunk
            return Output(data + self.fail(failure).data, starts, True, failure)
        return Output(data, starts, self.ended)

    def _client_bytes(self, complete: bytes, events: list[ServerSentEvent]) -> tuple[bytes, UpstreamError | None]:
        """The client's bytes for these events, and the failure that cut them short, if any."""
        if self.translator is None:
            if not events and not self.started:
                if len(self.held) < HELD_LIMIT:  # comments before the first event go out with it, whatever the chunking
                    self.held += complete
                return b"", None
            if not events:
                return complete, None
            if not self.started and is_error_event(events[0], self.upstream):
                return b"", self.error_for(events[0].data)
            if not self.started:
                complete, self.held = self.held + complete, b""
            if self.trail is not None:
                for event in events:
                    self.trail.see(event.data)
            # an error event after the start ends the stream too: the client has been told, in the upstream's words
            upstream = self.upstream
            last = events[-1]  # the hot path: one event per chunk, the end (if any) last
            self.ended = is_end_event(last, upstream) or is_error_event(last, upstream)
            if not self.ended and len(events) > 1:
                self.ended = any(is_end_event(e, upstream) or is_error_event(e, upstream) for e in events)
            return complete, None
        out = []
        failure: UpstreamError | None = None
        for event in events:
            if self.translator.finished:
                break  # past the end, as in a later chunk
            if is_error_event(event, self.upstream):
                failure = self.error_for(event.data)
                break
            if not event.data:
                continue
            try:
                out.append(self.translator.feed(event.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                failure = UpstreamProtocolError(f"upstream sent an event that could not be translated ({exc})")
                break
        self.ended = self.translator.finished
        return b"".join(out), failure

    def fail(self, failure: UpstreamError) -> Output:
        """The upstream failed (a bad event here, or the transport: a reset, a read timeout)."""
        if self.ended:
            return Output(ended=True)  # after a complete answer, a broken connection costs the client nothing
        if not self.started:
            self.ended = True
            return Output(error=failure, ended=True)
        # Bytes already reached the client: it cannot be retried, so end it visibly, never as a success.
        self.ended = True
        ending = self.translator.fail(failure) if self.translator is not None else None
        return Output(ending or stream_error_event(failure, self.client, self.trail), ended=True, error=failure)
