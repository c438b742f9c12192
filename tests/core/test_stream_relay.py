"""The sans-I/O stream relay: what reaches the client for any upstream bytes, in any chunking.

The rule, as h11's fuzz invariant: every input ends in a well-formed stream in the client's format (its end event,
or an upstream error event relayed after the start, or our own error event), or in an error raised before anything
was sent; never a silent cut, never another exception; and the output does not depend on how the bytes were cut.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from megagate.core.errors import Format, UpstreamError, UpstreamStatus
from megagate.core.responses_stream import ChatToResponsesStream
from megagate.core.sse import SSEDecoder
from megagate.core.stream_relay import RESPONSES_ENDS, AnthropicToResponsesStream, Output, StreamRelay
from megagate.core.translate_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream

OPENAI_STREAM = (
    b": keep-alive\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)  # fmt: skip
OPENAI_ERROR = b'data: {"error":{"message":"overloaded","type":"api_error"}}\n\n'
ANTHROPIC_ERROR = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'


def error_for(data: bytes) -> UpstreamError:
    return UpstreamStatus(502, f"upstream error event: {data[:40]!r}")


def relay(client: Format, upstream: Format) -> StreamRelay:
    translator: Any = None
    if client == "responses":
        responses = ChatToResponsesStream("m", 1)
        chat = AnthropicToOpenAIStream("m", 1)
        translator = responses if upstream == "openai" else AnthropicToResponsesStream(chat, responses)
    elif client != upstream:
        translator = (
            OpenAIToAnthropicStream("m")
            if upstream == "openai"
            else AnthropicToOpenAIStream("m", 1, include_usage=True)
        )
    return StreamRelay(client, upstream, translator, error_for)


def run(client: Format, upstream: Format, chunks: list[bytes]) -> tuple[bytes, list[Output], StreamRelay]:
    """Feed the chunks then EOF, as the relay loop does; stop at the first error raised before the start."""
    r = relay(client, upstream)
    outputs = []
    for chunk in [*[c for c in chunks if c], b""]:
        output = r.receive_data(chunk)
        outputs.append(output)
        if output.error is not None and not output.data:
            break
    return b"".join(o.data for o in outputs), outputs, r


def events_of(data: bytes) -> list[Any]:
    decoder = SSEDecoder()
    return decoder.receive_data(data)[1] + decoder.receive_data(b"")[1]


def test_a_same_format_stream_is_relayed_byte_for_byte_and_starts_once() -> None:
    comment, rest = OPENAI_STREAM.split(b"\n\n", 1)
    data, outputs, r = run("openai", "openai", [comment + b"\n\n", rest])
    assert data == OPENAI_STREAM  # a comment before the first event is held and sent with it: bytes untouched
    assert [o.started for o in outputs].count(True) == 1 and outputs[-1].ended and r.usage is not None
    assert r.usage.total == 5


def test_byte_at_a_time_equals_whole_in_every_direction() -> None:
    for client, upstream, stream in [
        ("openai", "openai", OPENAI_STREAM),
        ("anthropic", "openai", OPENAI_STREAM),
        ("anthropic", "anthropic", ANTHROPIC_STREAM),
        ("openai", "anthropic", ANTHROPIC_STREAM),
    ]:
        whole = run(client, upstream, [stream])[0]  # type: ignore[arg-type]
        single = run(client, upstream, [stream[i : i + 1] for i in range(len(stream))])[0]  # type: ignore[arg-type]
        assert whole == single and whole


def test_an_error_event_before_the_start_is_raised_with_nothing_sent() -> None:
    for client, upstream, stream in [("openai", "openai", OPENAI_ERROR), ("openai", "anthropic", ANTHROPIC_ERROR)]:
        data, outputs, _ = run(client, upstream, [stream])  # type: ignore[arg-type]
        assert data == b"" and outputs[-1].error is not None and not any(o.started for o in outputs)


def test_a_drop_after_the_start_ends_with_our_error_event() -> None:
    cut = OPENAI_STREAM[: OPENAI_STREAM.index(b"data: [DONE]")]
    data, outputs, _ = run("openai", "openai", [cut])
    assert outputs[-1].ended and outputs[-1].error is not None
    last = events_of(data)[-2:]
    assert b"ended the stream early" in last[0].data and last[1].data == b"[DONE]"
    data, _, _ = run("anthropic", "openai", [cut])
    assert events_of(data)[-1].event == "error"


def test_a_transport_failure_after_the_start_ends_the_stream_visibly() -> None:
    r = relay("anthropic", "anthropic")
    assert r.receive_data(ANTHROPIC_STREAM[:300]).started
    output = r.fail(UpstreamError("the upstream reset the connection"))
    assert output.ended and events_of(output.data)[-1].event == "error" and b"reset" in output.data


FRAGMENTS = [
    *[part + b"\n\n" for part in OPENAI_STREAM.split(b"\n\n") if part],
    *[part + b"\n\n" for part in ANTHROPIC_STREAM.split(b"\n\n") if part],
    OPENAI_ERROR,
    ANTHROPIC_ERROR,
    b"data: {not json}\n\n",
    b'data: {"choices": 7}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":"x"}\n\n',
    b"data: [DONE]\n\n",
    b"\r\n",
    b": comment\n",
    b"event: message_stop\ndata: {}\n\n",
]
inputs = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=12), max_size=12)
directions = st.sampled_from([("openai", "openai"), ("anthropic", "openai"), ("anthropic", "anthropic"),
                              ("openai", "anthropic"), ("responses", "openai"),
                              ("responses", "anthropic")])  # fmt: skip


def well_formed(client: Format, upstream: Format, data: bytes) -> bool:
    """The stream reached its terminal event: the end event, our error event, or (same format) an upstream error
    event relayed after the start. A same-format upstream's bytes after it pass as they came."""
    if client == "responses":
        return responses_well_formed(events_of(data))
    for event in events_of(data):
        if client == "anthropic" and event.event in ("message_stop", "error"):
            return True
        if client == "openai" and event.data == b"[DONE]":
            return True
        if client == upstream == "openai" and event.data.lstrip().startswith(b'{"error"'):
            return True
    return False


def responses_well_formed(events: list[Any]) -> bool:
    """One response from `response.created` to its terminal event, sequence numbers 0, 1, 2... without a gap, the
    terminal event (completed, incomplete, or our `response.failed`) naming the response that was created."""
    told = [msgspec.json.decode(e.data) for e in events]
    if not told or told[0]["type"] != "response.created" or told[-1]["type"] not in RESPONSES_ENDS:
        return False
    ids = {told[0]["response"]["id"], told[-1]["response"]["id"]}
    return len(ids) == 1 and [e["sequence_number"] for e in told] == list(range(len(told)))


@settings(max_examples=int(os.environ.get("MEGAGATE_EXAMPLES", "400")), deadline=None)
@given(parts=inputs, direction=directions, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_any_bytes_end_well_formed_or_as_an_error_before_the_start(
    parts: list[bytes], direction: tuple[Format, Format], cuts: list[int]
) -> None:
    client, upstream = direction
    stream = b"".join(parts)
    data, outputs, r = run(client, upstream, [stream])
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    again, outputs_again, _ = run(client, upstream, pieces)
    assert again == data  # chunking-invariant, to the byte
    assert (outputs[-1].error is None) == (outputs_again[-1].error is None)
    if not r.started:
        assert data == b"" and outputs[-1].error is not None  # raised before anything reached the client
    else:
        assert outputs[-1].ended and well_formed(client, upstream, data), data[-300:]
