"""The upstream HTTP client seam: what megagate needs from a transport (timeouts are config's `Timeouts`).

Two implementations sit behind `Transport`: `HttpcoreTransport` (httpcore connections reused from a LIFO kept
here, not httpcore's pool; see the benchmarks README) and `FastTransport` (anyio byte streams + httptools' parser).
Both raise only megagate's own `Upstream*` errors, so nothing above this package knows which one runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import anyio

from megagate.config import Timeouts as Timeouts  # re-exported: the transports take config's own
from megagate.core.errors import UpstreamProtocolError, UpstreamTimeout

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname or "", port)

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        return (self.host if self.port == default else f"{self.host}:{self.port}").encode()


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; each wait is bounded by the read timeout."""
        ...

    async def read(self, limit: int = ...) -> bytes:
        """The whole body (at most `limit` bytes; more is a protocol error)."""
        ...


class Transport(Protocol):
    def stream(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        first_byte: float | None = None,
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send a request; inside the context the response's headers have arrived and its body can be read.

        Waiting for the headers is bounded by `first_byte` (default: the transport's first-byte timeout).
        Leaving the context early closes the connection (it is never reused half-read)."""
        ...

    async def aclose(self) -> None: ...


class OriginSlots:
    """At most `max_connections` requests in flight per origin; waiting for a slot is bounded by `pool_timeout`."""

    def __init__(self, max_connections: int, pool_timeout: float) -> None:
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._limits: dict[Origin, anyio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, origin: Origin) -> AsyncIterator[None]:
        limit = self._limits.get(origin)
        if limit is None:
            limit = self._limits[origin] = anyio.Semaphore(self.max_connections)
        try:
            limit.acquire_nowait()  # the common case: a slot is free, no timer needed
        except anyio.WouldBlock:
            with anyio.move_on_after(self.pool_timeout) as waited:
                await limit.acquire()
            if waited.cancelled_caught:
                raise UpstreamTimeout("no upstream connection became free within the pool timeout") from None
        try:
            yield
        finally:
            limit.release()


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A whole body from `chunks`, or UpstreamProtocolError past `limit` bytes (shared by both transports)."""
    parts = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UpstreamProtocolError(f"upstream body larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def connection_failure(exc: BaseException) -> UpstreamProtocolError:
    """What broke, in words: libraries wrap the OS's error (httpcore's `ReadError` from anyio's
    `BrokenResourceError` from `ConnectionResetError`), whose own text is often empty, so the chain is searched."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for error in chain:
        if isinstance(error, ConnectionResetError):
            return UpstreamProtocolError("the upstream reset the connection")
        if isinstance(error, BrokenPipeError):
            return UpstreamProtocolError("the upstream closed the connection while megagate was sending")
        if isinstance(error, ConnectionAbortedError):
            return UpstreamProtocolError("the upstream connection was aborted")
    if any(isinstance(error, (anyio.BrokenResourceError, anyio.ClosedResourceError)) for error in chain):
        return UpstreamProtocolError("the upstream closed the connection")
    root = chain[-1]
    return UpstreamProtocolError(f"upstream connection failed ({type(root).__name__}: {root or 'no detail'})")
