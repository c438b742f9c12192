"""The byte streams under the fast transport's connections: `receive(timeout)`, `send(data, timeout)`, `aclose()`.

On trio (and any other anyio backend) they are anyio's own socket streams, each wait bounded by a cancel scope.
On asyncio (and uvloop) they are a plain `asyncio.Protocol`: profiling 256 streams x 10 ms per chunk (issue 4)
put about a third of the worker's samples in anyio's asyncio stream, which pauses and resumes reading around every
receive (two epoll_ctl calls and selector bookkeeping per chunk), and in the cancel scope built for every receive.
Here reading stays on (paused only past a high-water mark, for back-pressure) and a read is timed by a deadline
that one lazy loop timer per connection checks: a stream's reads come every few milliseconds and each would
otherwise schedule and cancel a timer of its own. Failures surface as anyio's exception types so the transport
maps them the same way on every loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

import anyio
import anyio.abc
import anyio.streams.tls
import sniffio

HIGH_WATER = 1024 * 1024  # stop reading from the socket while this much is buffered and unread


class ByteStream(Protocol):
    async def receive(self, timeout: float) -> bytes:
        """The next bytes, b"" at end of stream; TimeoutError after `timeout` seconds without any."""
        ...

    async def send(self, data: bytes, timeout: float) -> None: ...

    async def aclose(self) -> None: ...


async def open_stream(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    path: str | None = None,
    server_hostname: str | None = None,
    keepalive: bool = False,
) -> ByteStream:
    """A connected stream to host:port, or to the unix socket at `path` (TLS with `ssl_context`, checked against
    `server_hostname`, default the host), the fastest kind for the running event loop. `keepalive`: TCP keepalive
    probes, so that a pooled connection to a peer that vanished (a failover, a NAT that forgot it) fails instead of
    hanging."""
    hostname = (server_hostname or host) if ssl_context is not None else None
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()
        if path is not None:
            transport, protocol = await loop.create_unix_connection(
                lambda: _StreamProtocol(loop), path, ssl=ssl_context, server_hostname=hostname
            )
        else:
            transport, protocol = await loop.create_connection(
                lambda: _StreamProtocol(loop), host, port, ssl=ssl_context, server_hostname=hostname
            )
        if keepalive and path is None:
            _keep_alive(transport.get_extra_info("socket"))
        return protocol
    stream: anyio.abc.ByteStream
    if path is not None:
        stream = await anyio.connect_unix(path)
        if ssl_context is not None:
            stream = await anyio.streams.tls.TLSStream.wrap(
                stream, hostname=hostname, ssl_context=ssl_context, standard_compatible=False
            )
    elif ssl_context is not None:
        stream = await anyio.connect_tcp(host, port, ssl_context=ssl_context, tls_hostname=hostname,
                                         tls_standard_compatible=False)  # fmt: skip
    else:
        stream = await anyio.connect_tcp(host, port)
    if keepalive and path is None:
        _keep_alive(stream.extra(anyio.abc.SocketAttribute.raw_socket))
    return AnyioStream(stream)


def _keep_alive(sock: socket.socket | None) -> None:
    """Probe an idle connection after 60 s, every 10 s, and give up after 3 unanswered (Linux's default waits two
    hours before the first probe)."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class AnyioStream:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream

    async def receive(self, timeout: float) -> bytes:
        with anyio.fail_after(timeout):
            try:
                return await self.stream.receive(65536)
            except anyio.EndOfStream:
                return b""

    async def send(self, data: bytes, timeout: float) -> None:
        with anyio.fail_after(timeout):
            await self.stream.send(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], timeout: float) -> None:
    """Wait for `waiter` to be woken, or TimeoutError after `timeout` seconds: one loop timer, no cancel scope."""
    timer = loop.call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class _ReadTimer:
    """The read deadline of one connection, checked by one loop timer that is re-armed only when it fires early.

    A read sets its deadline (`arm`); the timer stays scheduled across reads and, when it fires, fails the waiting
    read if its deadline has passed, or sleeps on until it. Only a deadline earlier than the scheduled one (a
    shorter timeout) reschedules it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadline = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, waiter: asyncio.Future[None], timeout: float) -> None:
        self.waiter = waiter
        self.deadline = self.loop.time() + timeout
        if self.handle is not None and self.handle.when() > self.deadline:
            self.handle.cancel()
            self.handle = None
        if self.handle is None:
            self.handle = self.loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self.handle = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # no read waiting: the next one arms the timer again
        if self.loop.time() >= self.deadline:
            waiter.set_exception(TimeoutError())
        else:
            self.handle = self.loop.call_at(self.deadline, self._fire)

    def cancel(self) -> None:
        self.waiter = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class _StreamProtocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader; `send` waits only while the transport asks to pause writing."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.reading_paused = False
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.read_timer = _ReadTimer(loop)

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        _wake(self.reader)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.reader)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.reader)
        _wake(self.writer)
        self.read_timer.cancel()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self.writer)

    # ByteStream
    async def receive(self, timeout: float) -> bytes:
        if not self.chunks and not self.eof:
            self.reader = reader = self.loop.create_future()
            self.read_timer.arm(reader, timeout)
            try:
                await reader
            finally:
                self.reader = self.read_timer.waiter = None
        if self.chunks:
            chunks, self.chunks, self.buffered = self.chunks, [], 0
            if self.reading_paused and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.error is not None:
            raise anyio.BrokenResourceError from self.error
        return b""

    async def send(self, data: bytes, timeout: float) -> None:
        if self.transport is None or self.transport.is_closing():
            raise anyio.BrokenResourceError from self.error
        self.transport.write(data)
        if self.writing_paused:
            self.writer = self.loop.create_future()
            try:
                await _wait(self.loop, self.writer, timeout)
            finally:
                self.writer = None
            if self.error is not None or self.transport.is_closing():
                raise anyio.BrokenResourceError from self.error

    async def aclose(self) -> None:
        self.read_timer.cancel()
        if self.transport is not None:
            self.transport.close()
