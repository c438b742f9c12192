"""Reading HTTP/1.1 requests off a raw stream, for the tests' minimal servers (scripted upstreams, webhook
receivers). A class, not an async generator: a server that stops mid-stream would leave the generator for the
garbage collector to finalise (a ResourceWarning under trio)."""

from __future__ import annotations

import anyio
import anyio.abc


class RequestReader:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> tuple[bytes, bytes] | None:
        """(head, body) of the next request, or None when the client has closed the stream."""
        while b"\r\n\r\n" not in self.buffer:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")), 0)
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, body
