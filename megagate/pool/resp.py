"""A small Redis client for the shared key pool: RESP2 over megagate's byte streams, one command per connection.

Why hand-written (the house rule: only where a measurement shows the library is the bottleneck): with coredis 6.9
the Redis store added +0.82 ms p50 and +0.6-0.8 ms CPU per request (issue 15). In a loop against a local
redis-server coredis costs about 225 µs CPU per GET and 320 µs per EVALSHA on this machine; cProfile shows five
anyio cancel scopes, a reader task and memory-stream hand-offs per command, six event-loop turns per GET. The pool
needs only EVALSHA (scripts hold its logic), so this client does that on `upstream/streams.py` (an asyncio Protocol
on asyncio, anyio's streams on trio): one write and usually one read per call (`benchmarks/shared_pool.py` has the
figures).

Theory of operation. Connections are kept in a LIFO of idle ones; a call checks one out (or opens one, sending AUTH
and SELECT from the URL), writes the command, reads until one whole reply has been parsed, and puts the connection
back. Any failure, timeout or cancellation closes the connection: a reply may still be on its way, so it is never
reused. A connection that was idle and fails before any reply byte arrives is retried once on a fresh one: after a
Redis restart every idle connection is stale, and the server never saw the command.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio

from megagate.core.errors import RedisError
from megagate.upstream.streams import ByteStream, open_stream

Reply = Any  # bytes, int, None, or a list of replies (an error inside an array stays an exception object)


class ReplyError(RedisError):
    """Redis answered with an error reply (`-ERR ...`, `-NOSCRIPT ...`)."""


class Incomplete(Exception):
    """The buffer does not hold a whole reply yet."""


def encode(*parts: bytes | str | int | float) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def parse(buffer: bytes, position: int = 0) -> tuple[Reply, int]:
    """One reply starting at `position`, and where the next one starts; Incomplete if it has not all arrived."""
    end = buffer.find(b"\r\n", position)
    if end == -1:
        raise Incomplete
    kind, line, after = buffer[position : position + 1], buffer[position + 1 : end], end + 2
    if kind == b"+":
        return line, after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            raise Incomplete
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse(buffer, after)
            items.append(item)
        return items, after
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), after
    raise RedisError(f"unexpected reply from Redis: {buffer[position : position + 32]!r}")


class _Connection:
    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.used = False  # it has answered before: a failure with no reply byte may be a stale connection

    async def call(self, request: bytes, deadline: float) -> Reply:
        """The reply; `_Closed` says whether any of it had arrived (for the stale-connection retry)."""
        await self.stream.send(request, max(0.0, deadline - time.monotonic()))
        buffer = b""
        while True:
            data = await self.stream.receive(max(0.0, deadline - time.monotonic()))
            if not data:
                raise _Closed(bool(buffer))
            buffer += data
            try:
                reply, end = parse(buffer)
            except Incomplete:
                continue
            if end != len(buffer):
                raise RedisError("Redis sent more than one reply to one command")
            self.used = True
            return reply

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class _Closed(RedisError):
    def __init__(self, answered: bool) -> None:
        super().__init__("Redis closed the connection")
        self.answered = answered


class Script:
    """A Lua script called by its SHA1 (EVALSHA); a Redis that does not know it (restarted, flushed) gets it by EVAL,
    which also caches it there again."""

    def __init__(self, client: RedisClient, source: str) -> None:
        self.client = client
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Reply:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await self.client.execute("EVAL", self.source, len(keys), *keys, *args)


class RedisClient:
    """`execute(*command)` and `register_script(source)` against one Redis server; `async with` closes it."""

    def __init__(
        self,
        host: str,
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 1.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.ssl_context = ssl_context
        self.timeout = timeout  # bounds each call: connecting, writing and reading its reply
        self._idle: list[_Connection] = []

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0) -> RedisClient:
        """`redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"not a redis:// or rediss:// URL: {parts.scheme}://{parts.hostname or ''}")
        path = parts.path.strip("/")
        return cls(
            parts.hostname,
            parts.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl_context=ssl.create_default_context() if parts.scheme == "rediss" else None,
            timeout=timeout,
        )

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *command: bytes | str | int | float) -> Reply:
        """Send one command and return its reply; an error reply is raised as ReplyError, anything else that goes
        wrong (refused, reset, timed out) as RedisError."""
        request = encode(*command)
        deadline = time.monotonic() + self.timeout
        for fresh in (False, True):
            connection = self._idle.pop() if self._idle and not fresh else await self._connect(deadline)
            try:
                reply = await connection.call(request, deadline)
            except _Closed as closed:
                await connection.aclose()
                if connection.used and not closed.answered and not fresh:
                    continue  # a stale idle connection: the server never saw the command
                raise
            except TimeoutError:
                await connection.aclose()
                raise RedisError(f"Redis did not answer within {self.timeout:g} s") from None
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                await connection.aclose()
                if connection.used and not fresh:
                    continue
                raise RedisError(f"Redis connection failed ({type(exc).__name__})") from None
            except BaseException:  # cancelled, or a reply that could not be read: the connection is spent
                await connection.aclose()
                raise
            self._idle.append(connection)
            if isinstance(reply, ReplyError):
                raise reply
            return reply
        raise AssertionError("unreachable")

    async def _connect(self, deadline: float) -> _Connection:
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                connection = _Connection(await open_stream(self.host, self.port, self.ssl_context))
        except (OSError, TimeoutError) as exc:
            raise RedisError(f"cannot connect to Redis at {self.host}:{self.port} ({type(exc).__name__})") from None
        handshake: list[tuple[str | int, ...]] = []
        if self.password is not None:
            handshake.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            handshake.append(("SELECT", self.db))
        try:
            for command in handshake:
                reply = await connection.call(encode(*command), deadline)
                if isinstance(reply, ReplyError):
                    raise RedisError(f"Redis refused {command[0]}: {reply}")  # never the password itself
        except BaseException:
            await connection.aclose()
            raise
        connection.used = False  # the handshake's replies say nothing about the next command's
        return connection

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
