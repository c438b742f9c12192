"""RESP2 on the wire: commands encoded as arrays of bulk strings, and replies read incrementally.

`ReplyReader` is fed whatever the socket delivers and keeps its place, so a reply cut into any number of pieces is
parsed in time linear in its size (the first client re-parsed the whole buffer on every piece: quadratic for the
large arrays REPORT returns).
"""

from __future__ import annotations

from typing import Any

from megagate.core.errors import RedisError

Reply = Any  # bytes, int, None, or a list of replies (an error inside an array stays an exception object)


class ReplyError(RedisError):
    """Redis answered with an error reply (`-ERR ...`, `-NOSCRIPT ...`)."""


class ProtocolError(RedisError):
    """What arrived is not RESP2: the connection cannot be trusted for another reply."""


def encode(*parts: bytes | str | int | float) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


class ReplyReader:
    """One reply, from pieces: `feed(data)` says whether it is whole; then `reply` holds it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0  # where the next element starts
        self.arrays: list[tuple[int, list[Reply]]] = []  # the arrays being filled: (how many elements, so far)
        self.started = False  # any byte arrived: the server has run the command
        self.reply: Reply = None

    def feed(self, data: bytes) -> bool:
        if not self.started:  # the usual case: the whole reply in the first piece, parsed straight from the bytes
            self.started = True
            try:
                reply, end = _whole(data, 0)
            except _Cut:
                pass
            else:
                if end != len(data):
                    raise ProtocolError("Redis sent more than one reply to one command")
                self.reply = reply
                return True
        self.buffer += data
        while True:
            element = self._element()
            if element is _INCOMPLETE:
                return False
            value, is_array = element
            if is_array:
                continue
            while self.arrays:  # a value completes zero or more arrays around it
                count, items = self.arrays[-1]
                items.append(value)
                if len(items) < count:
                    break
                self.arrays.pop()
                value = items
            else:
                if self.position != len(self.buffer):
                    raise ProtocolError("Redis sent more than one reply to one command")
                self.reply = value
                return True

    def _element(self) -> Any:
        """The next element's value and whether it opened an array, or _INCOMPLETE (nothing consumed)."""
        buffer, start = self.buffer, self.position
        end = buffer.find(b"\r\n", start)
        if end == -1:
            return _INCOMPLETE
        kind, line, after = buffer[start], bytes(buffer[start + 1 : end]), end + 2
        if kind == _BULK:
            size = _number(line)
            if size < 0:
                self.position = after
                return None, False
            if len(buffer) < after + size + 2:
                return _INCOMPLETE
            self.position = after + size + 2
            return bytes(buffer[after : after + size]), False
        self.position = after
        if kind == _ARRAY:
            count = _number(line)
            if count <= 0:
                return (None if count < 0 else []), False
            self.arrays.append((count, []))
            return None, True
        return _line_reply(kind, line, bytes(buffer[start : start + 32])), False


_INCOMPLETE = object()


class _Cut(Exception):
    """The first piece does not hold the whole reply: read on incrementally."""


def _whole(data: bytes, position: int) -> tuple[Reply, int]:
    """One reply starting at `position` if `data` holds all of it (else _Cut), and where it ends. Only ever run on
    the first piece of a reply, so that its cost stays linear however the rest arrives."""
    end = data.find(b"\r\n", position)
    if end == -1:
        raise _Cut
    kind, line, after = data[position], data[position + 1 : end], end + 2
    if kind == _BULK:
        size = _number(line)
        if size < 0:
            return None, after
        if len(data) < after + size + 2:
            raise _Cut
        return data[after : after + size], after + size + 2
    if kind == _ARRAY:
        count = _number(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _whole(data, after)
            items.append(item)
        return items, after
    return _line_reply(kind, line, data[position : position + 32]), after


def _line_reply(kind: int, line: bytes, sample: bytes) -> Reply:
    """A reply that is all on its line: a simple string, an integer or an error."""
    if kind == _SIMPLE:
        return line
    if kind == _INTEGER:
        return _number(line)
    if kind == _ERROR:
        return ReplyError(line.decode("utf-8", "replace"))
    raise ProtocolError(f"unexpected reply from Redis: {sample!r}")


_SIMPLE, _ERROR, _INTEGER, _BULK, _ARRAY = b"+-:$*"


def _number(line: bytes) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit():  # stricter than int(), which takes " 1", "+1" and "1_0"
        raise ProtocolError(f"Redis sent {line[:32]!r} where a number belongs")
    return int(line)
