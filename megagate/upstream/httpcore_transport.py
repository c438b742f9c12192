"""An upstream transport on httpcore connections, pooled here as a LIFO of idle connections per origin.

Why not `httpcore.AsyncConnectionPool`: it re-scans every connection and queued request on each change
(encode/httpcore#1035); measured here it managed 110-160 req/s at 6-9 ms CPU per request where reusing
`AsyncHTTPConnection` objects from a LIFO reached ~650 req/s. The LIFO keeps the most recently used (warmest)
connection in use and lets the others expire. This is the only module that imports httpcore.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpcore

from megagate.asgi import Headers
from megagate.core.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from megagate.upstream import Origin, OriginSlots, Timeouts, connection_failure, read_limited

KEEPALIVE_EXPIRY = 60.0


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate httpcore's exceptions into megagate's at the boundary."""
    try:
        yield
    except httpcore.ConnectTimeout as exc:
        raise UpstreamConnectError(f"timed out connecting to upstream ({exc or 'connect timeout'})") from exc
    except httpcore.ConnectError as exc:
        raise UpstreamConnectError(f"cannot connect to upstream ({exc or 'connection refused'})") from exc
    except TimeoutError as exc:  # anyio.fail_after around the wait for response headers
        raise UpstreamTimeout("upstream sent no response within the first-byte timeout") from exc
    except httpcore.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream timed out ({type(exc).__name__})") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise connection_failure(exc) from exc


class _Response:
    """An async iterator over the body, not an async generator: a generator left half-read is only finalised by
    the garbage collector (trio warns), while this one is closed when the transport's context exits."""

    def __init__(self, response: httpcore.Response) -> None:
        self.status = response.status
        self.headers: Headers = list(response.headers)
        self._response = response
        self._chunks: Any = None

    def aiter_bytes(self) -> _Response:
        return self

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._response.stream.__aiter__()  # type: ignore[union-attr]
        with map_exceptions():
            return await self._chunks.__anext__()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if self._chunks is not None:
            await self._chunks.aclose()
        await self._response.aclose()

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        return await read_limited(self.aiter_bytes(), limit)


class HttpcoreTransport:
    """Keep-alive HTTP/1.1 connections per origin, at most `max_connections` in use per origin."""

    def __init__(
        self, *, timeouts: Timeouts, max_connections: int = 256, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeouts = {
            "connect": timeouts.connect,
            "read": timeouts.read,
            "write": timeouts.write,
            "pool": timeouts.pool,
        }
        self._first_byte = timeouts.first_byte
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[httpcore.AsyncHTTPConnection]] = {}
        self._slots = OriginSlots(max_connections, timeouts.pool)
        self._closed = False

    def _checkout(self, origin: Origin) -> httpcore.AsyncHTTPConnection:
        idle = self._idle.setdefault(origin, [])
        while idle:
            connection = idle.pop()
            if connection.is_idle() and not connection.has_expired():
                return connection
            # Expired or closed by the server while idle: dropping it is enough, its socket is already dead or
            # will be collected; closing needs an await we do not want on this path.
        return httpcore.AsyncHTTPConnection(
            httpcore.Origin(origin.scheme.encode(), origin.host.encode(), origin.port),
            ssl_context=self._ssl_context,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )

    @asynccontextmanager
    async def stream(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        first_byte: float | None = None,
    ) -> AsyncIterator[_Response]:
        if self._closed:
            raise UpstreamError("transport is closed")
        async with self._slots.slot(origin):
            connection = self._checkout(origin)
            url = httpcore.URL(
                scheme=origin.scheme.encode(), host=origin.host.encode(), port=origin.port, target=target
            )
            request = httpcore.Request(
                method,
                url,
                headers=[(b"host", origin.host_header), *headers],
                content=body,
                extensions={"timeout": self._timeouts},
            )
            try:
                with map_exceptions(), anyio.fail_after(first_byte or self._first_byte):
                    response = await connection.handle_async_request(request)
                wrapped = _Response(response)
                try:
                    yield wrapped
                finally:
                    with anyio.CancelScope(shield=True):
                        await wrapped.aclose()  # returns the connection to IDLE only if fully read
            finally:
                if connection.is_idle() and not connection.has_expired() and not self._closed:
                    self._idle[origin].append(connection)
                else:
                    with anyio.CancelScope(shield=True):
                        await connection.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        with anyio.CancelScope(shield=True):
            for connections in idle.values():
                for connection in connections:
                    await connection.aclose()
