"""The upstream HTTP client seam: what megagate needs from a transport (timeouts are config's `Timeouts`).

Two implementations sit behind `Transport`: `HttpcoreTransport` (httpcore connections reused from a LIFO kept
here, not httpcore's pool; see the benchmarks README) and `FastTransport` (anyio byte streams + httptools' parser).
Both raise only megagate's own `Upstream*` errors, so nothing above this package knows which one runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import msgspec

from megagate.asgi import Headers
from megagate.config import Timeouts as Timeouts  # re-exported: the transports take config's own
from megagate.core.errors import UpstreamProtocolError, UpstreamStatus, UpstreamTimeout


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


def first_byte_timeout(seconds: float, waited_for: str = "response") -> UpstreamTimeout:
    """The one first-byte failure: `Timeouts.first_byte` passed before the upstream sent `waited_for` (the
    transport waits for the headers, the proxy for a stream's first event: one budget, one message)."""
    return UpstreamTimeout(f"upstream sent no {waited_for} within the first-byte timeout ({seconds:g} s)")


_upstream_error_decoder = msgspec.json.Decoder(dict[str, Any])


def upstream_error(status: int, body: bytes, retry_after: bytes | None, secrets: tuple[str, ...]) -> UpstreamStatus:
    """An UpstreamStatus carrying the upstream's own message (OpenAI's or Anthropic's envelope), pool keys scrubbed."""
    message = f"upstream returned HTTP {status}"
    param = code = None
    try:
        decoded = _upstream_error_decoder.decode(body)
        error = decoded.get("error")
        if isinstance(error, Mapping):
            message = str(error.get("message") or message)
            param, code = error.get("param"), error.get("code")
        elif isinstance(error, str):
            message = error
    except msgspec.DecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        if text:
            message = f"{message}: {text}"
    if status in (401, 403):
        message = f"the upstream refused megagate's key (HTTP {status}): {message}"
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    failure = UpstreamStatus(status, message, retry_after=parse_retry_after(retry_after))
    failure.param = param if isinstance(param, str) else None
    failure.code = code if isinstance(code, str) else None
    return failure


def parse_retry_after(value: bytes | None) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3 delay-seconds; an HTTP-date is ignored: it needs a clock)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def response_header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def base_path_of(origin_url: str) -> bytes:
    """The path prefix of an upstream base URL (`http://host/openai` serves `/openai/v1/...`)."""
    after_scheme = origin_url.split("://", 1)[1]
    slash = after_scheme.find("/")
    return after_scheme[slash:].rstrip("/").encode() if slash != -1 else b""
