"""The SSE decoder: WHATWG edge cases by name, and chunking invariance by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.errors import UpstreamProtocolError
from megagate.core.sse import ServerSentEvent, SSEDecoder

FRAGMENTS = [
    b'data: {"a": 1}\n\n',
    b"data: x\r\n\r\n",
    b"data: y\r\r",
    b": keep-alive comment\n\n",
    b'event: error\ndata: {"error": {}}\n\n',
    b"data: line1\ndata: line2\n\n",
    b"id: 7\ndata: z\n\n",
    b"retry: 1500\n\n",
    b"data\n\n",
    b"data:no-space\n\n",
    b"data: \xc3\xa9\xe2\x82\xac\n\n",
    b"data: [DONE]\n\n",
    b"field-without-meaning: 1\n\n",
]


def decode(chunks: list[bytes]) -> tuple[bytes, list[ServerSentEvent]]:
    decoder = SSEDecoder()
    forwarded = b""
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        complete, new = decoder.receive_data(chunk)
        forwarded += complete
        events += new
    rest, _ = decoder.receive_data(b"")
    return forwarded + rest, events


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


def test_single_event() -> None:
    assert decode([b"data: hello\n\n"])[1] == [ServerSentEvent(b"hello")]


def test_multiline_data_is_joined_with_lf() -> None:
    assert decode([b"data: a\ndata: b\n\n"])[1] == [ServerSentEvent(b"a\nb")]


def test_trailing_cr_with_immediate_lf_in_next_chunk() -> None:
    """A CR ending one chunk and a LF starting the next are one line ending, not two (so no empty line)."""
    assert decode([b"data: a\r", b"\ndata: b\r\n\r\n"])[1] == [ServerSentEvent(b"a\nb")]


def test_mixed_line_endings() -> None:
    assert decode([b"data: a\rdata: b\r\ndata: c\n\r\n"])[1] == [ServerSentEvent(b"a\nb\nc")]


def test_comment_block_dispatches_nothing_but_is_forwarded() -> None:
    forwarded, events = decode([b": ping\n\n"])
    assert events == [] and forwarded == b": ping\n\n"


def test_event_type_and_id() -> None:
    events = decode([b"event: message_start\nid: 3\ndata: {}\n\n"])[1]
    assert events == [ServerSentEvent(b"{}", "message_start", "3")]


def test_id_with_null_is_ignored() -> None:
    assert decode([b"id: a\x00b\ndata: x\n\n"])[1][0].id is None


def test_retry_must_be_digits() -> None:
    assert decode([b"retry: 10\ndata: x\n\n"])[1][0].retry == 10
    assert decode([b"retry: ten\ndata: x\n\n"])[1][0].retry is None


def test_field_without_colon_and_value_without_space() -> None:
    assert decode([b"data\n\ndata:x\n\n"])[1] == [ServerSentEvent(b""), ServerSentEvent(b"x")]


def test_leading_bom_is_skipped() -> None:
    assert decode([b"\xef\xbb\xbfdata: x\n\n"])[1] == [ServerSentEvent(b"x")]


def test_unterminated_event_at_eof_is_discarded_but_its_bytes_are_kept() -> None:
    forwarded, events = decode([b"data: a\n\ndata: b\n"])
    assert events == [ServerSentEvent(b"a")]
    assert forwarded == b"data: a\n\ndata: b\n"


def test_only_complete_blocks_are_released() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"data: a\n\ndata: b") == (b"data: a\n\n", [ServerSentEvent(b"a")])
    assert decoder.receive_data(b"\n\n") == (b"data: b\n\n", [ServerSentEvent(b"b")])


def test_oversized_event_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        SSEDecoder(max_event_size=16).receive_data(b"data: " + b"x" * 64)


@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_decoding_is_chunking_invariant(parts: list[bytes], cuts: list[int]) -> None:
    """Any split of a stream gives the same events, and the forwarded bytes are exactly the input."""
    stream = b"".join(parts)
    whole_bytes, whole_events = decode([stream])
    chunked_bytes, chunked_events = decode(split(stream, cuts))
    assert chunked_events == whole_events
    assert chunked_bytes == whole_bytes == stream


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_byte_at_a_time_equals_whole(parts: list[bytes]) -> None:
    stream = b"".join(parts)
    assert decode([stream[i : i + 1] for i in range(len(stream))])[1] == decode([stream])[1]


def test_a_crlf_split_after_a_block_keeps_its_lf_in_the_relayed_bytes() -> None:
    """The LF of a CRLF that ended a block arrives in the next chunk; it is that block's byte, not lost (found by the
    stream relay's chunking property)."""
    decoder = SSEDecoder()
    first, events = decoder.receive_data(b"data: a\r\n\r")
    second, _ = decoder.receive_data(b"\ndata: b\r\n\r\n")
    assert [e.data for e in events] == [b"a"] and first + second == b"data: a\r\n\r\ndata: b\r\n\r\n"
