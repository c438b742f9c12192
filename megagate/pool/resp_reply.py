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
        self.started = True
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
        if kind == _SIMPLE:
            return line, False
        if kind == _INTEGER:
            return _number(line), False
        if kind == _ERROR:
            return ReplyError(line.decode("utf-8", "replace")), False
        if kind == _ARRAY:
            count = _number(line)
            if count <= 0:
                return (None if count < 0 else []), False
            self.arrays.append((count, []))
            return None, True
        raise ProtocolError(f"unexpected reply from Redis: {bytes(buffer[start : start + 32])!r}")


_INCOMPLETE = object()
_SIMPLE, _ERROR, _INTEGER, _BULK, _ARRAY = b"+-:$*"


def _number(line: bytes) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit():  # stricter than int(), which takes " 1", "+1" and "1_0"
        raise ProtocolError(f"Redis sent {line[:32]!r} where a number belongs")
    return int(line)
