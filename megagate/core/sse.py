"""A sans-I/O, incremental Server-Sent Events decoder (WHATWG HTML §9.2.6), bytes in, events out.

Theory of operation: the relay must forward upstream bytes untouched and as soon as an event is complete, so
`receive_data` returns two things: the bytes that now form complete blocks (everything up to and including the
blank line that ended the last complete event or comment block) and the events those blocks dispatched. Bytes of
an unfinished block stay buffered, bounded by `max_event_size`. Lines end in CRLF, LF or CR; a CR that ends one
chunk may be the first half of a CRLF, so `_skip_lf` remembers to drop a LF that starts the next chunk (the
`trailing_cr` trick of httpx-sse). We split on bytes, never on text: CR and LF never occur inside a UTF-8
multi-byte sequence, and the JSON in `data` is decoded later straight from bytes. `receive_data(b"")` is EOF:
per the spec an unterminated final event is discarded, but its bytes are still returned so a relay loses none.
"""

from __future__ import annotations

import msgspec

from megagate.core.errors import UpstreamProtocolError

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024


class ServerSentEvent(msgspec.Struct, frozen=True):
    """One dispatched event. `data` is the joined data lines, without the final newline."""

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE decoder: feed bytes with `receive_data`, get `(complete_bytes, events)` back."""

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max_event_size = max_event_size
        self._buffer = b""  # bytes after the last complete block
        self._scanned = 0  # offset in _buffer of the first line not parsed yet
        self._skip_lf = False
        self._started = False
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self.last_event_id: str | None = None

    def receive_data(self, data: bytes) -> tuple[bytes, list[ServerSentEvent]]:
        if not data:  # EOF: the spec discards an unterminated event; the bytes still belong to the stream
            rest, self._buffer, self._scanned, self._data, self._event = self._buffer, b"", 0, [], ""
            return rest, []
        at_boundary = not self._buffer  # the last chunk ended a block
        buffer = self._buffer + data if self._buffer else data
        pos = self._scanned
        if not self._started:
            self._started = True
            if buffer.startswith(BOM):
                pos = len(BOM)
        boundary = 0
        if self._skip_lf:
            self._skip_lf = False
            if buffer[pos : pos + 1] == b"\n":
                pos += 1
                if at_boundary:  # the LF of a CRLF that ended a block: it belongs to that block's bytes
                    boundary = pos
        events: list[ServerSentEvent] = []
        size = len(buffer)
        # Cache the next CR and LF so that a long run of lines costs one scan, not one per line.
        next_cr = buffer.find(b"\r", pos)
        next_lf = buffer.find(b"\n", pos)
        while next_lf != -1 or next_cr != -1:
            start = pos
            if next_cr == -1 or (next_lf != -1 and next_lf < next_cr):
                end, pos = next_lf, next_lf + 1
            else:
                end = next_cr
                if next_cr + 1 == size:
                    pos = size
                    self._skip_lf = True
                elif buffer[next_cr + 1] == 10:  # CRLF
                    pos = next_cr + 2
                else:
                    pos = next_cr + 1
            if next_lf != -1 and next_lf < pos:
                next_lf = buffer.find(b"\n", pos)
            if next_cr != -1 and next_cr < pos:
                next_cr = buffer.find(b"\r", pos)
            if end == start:  # a blank line ends the block
                boundary = pos
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._event = ""
            else:
                self._process_line(buffer[start:end])
        if size - boundary > self._max_event_size:
            raise UpstreamProtocolError(f"upstream SSE event larger than {self._max_event_size} bytes")
        self._buffer = buffer[boundary:]
        self._scanned = pos - boundary
        return buffer[:boundary], events

    def _process_line(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:  # a comment
            return
        if colon == -1:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace")
        elif field == b"retry" and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> ServerSentEvent:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = ServerSentEvent(data, self._event or "message", self._last_id, self._retry)
        self.last_event_id = self._last_id
        self._data = []
        self._event = ""
        self._retry = None
        return event
