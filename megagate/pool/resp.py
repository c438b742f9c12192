"""A small Redis client for the shared key pool: RESP2 over megagate's byte streams, one command per connection.

Why hand-written (the house rule: only where a measurement shows the library is the bottleneck): measured on this
machine (EVALSHA of the real release script, 10,000 sequential calls, CPU per call, asyncio / uvloop / trio) it
costs 49 / 34 / 67 µs against redis.asyncio + hiredis 100 / 84 / - (asyncio only: it fails under trio),
valkey-glide 2.6 83 / 83 / 114 (native, own threads) and coredis 6.9 190 / 162 / 186 (five anyio cancel scopes, a
reader task and memory-stream hand-offs per command). The pool needs only EVALSHA (scripts hold its logic), so this
client does that on `upstream/streams.py`: one write and usually one read per call.

Theory of operation.
- A bounded pool: at most `max_connections` connections per client (per process), callers waiting for one within
  the call's timeout. Idle connections wait in a LIFO, and those idle past `idle_timeout` are closed, so a burst
  does not leave hundreds open against a managed tier's connection cap. TCP keepalive is on.
- A new connection sends AUTH, SELECT and CLIENT SETNAME; any failure there, of any kind, is a RedisError.
- A call checks a connection out, writes the command, reads one whole reply (an incremental parser: linear in the
  reply's size however it is cut) and checks it back in. Any failure, timeout or cancellation closes the connection:
  a reply may still be on its way, so it is never reused. So does an error reply that says the server is no longer
  the one to talk to (READONLY after a failover, LOADING, MOVED...): the next connection may reach the new primary.
- A connection that was idle and fails before any reply byte arrived is retried once on a fresh one: after a Redis
  restart every idle connection is stale, and the server never saw the command. Once a reply byte has arrived the
  command ran: it is never sent again (a second ACQUIRE would hold a second lease).
- Everything that goes wrong reaches the caller as `RedisError` (core/errors.py), the store's one error.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from typing import Any

import anyio

from megagate.core.errors import RedisError
from megagate.core.redis_url import RedisTarget, parse_redis_url
from megagate.pool.resp_reply import ReplyError, ReplyReader, encode
from megagate.upstream.streams import ByteStream, open_stream

Reply = Any  # bytes, int, None, or a list of replies (an error inside an array stays an exception object)
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 60.0  # seconds an unused connection stays open
# Error replies after which this connection should not be used again: the server is not (or not yet) the primary.
NOT_THE_PRIMARY = ("READONLY", "LOADING", "MASTERDOWN", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
_TRANSPORT_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class _Lost(RedisError):
    """The connection failed during a call; `answered`: part of the reply had arrived (the command ran)."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


def _reason(exc: BaseException) -> str:
    """One line on why a connection failed (a TLS verification error says which check failed)."""
    cause = exc.__cause__ if exc.__cause__ is not None and not str(exc) else exc
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class _Connection:
    def __init__(self, stream: ByteStream, where: str, opened: list[int]) -> None:
        self.stream = stream
        self.where = where
        self.opened = opened  # the client's count of open connections, one cell shared by them all
        opened[0] += 1
        self.closed = False
        self.reused = False  # it answered before and waited idle: a failure with no reply byte may be staleness
        self.idle_since = 0.0

    async def call(self, request: bytes, deadline: float) -> Reply:
        reader = ReplyReader()
        try:
            await self.stream.send(request, max(0.0, deadline - time.monotonic()))
            while True:
                data = await self.stream.receive(max(0.0, deadline - time.monotonic()))
                if not data:
                    raise _Lost(f"Redis at {self.where} closed the connection", reader.started)
                if reader.feed(data):
                    return reader.reply
        except TimeoutError:
            raise RedisError(f"Redis at {self.where} did not answer in time") from None
        except _TRANSPORT_ERRORS as exc:
            raise _Lost(f"the connection to Redis at {self.where} failed ({_reason(exc)})", reader.started) from None

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.opened[0] -= 1
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (*_TRANSPORT_ERRORS, ssl.SSLError):
                pass  # it is being thrown away because it failed


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
        target: RedisTarget | None = None,
        *,
        timeout: float = 1.0,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.target = target or RedisTarget()
        self.timeout = timeout  # bounds each call: waiting for a connection, connecting, writing, reading
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.ssl_context = tls_context(self.target) if self.target.tls else None
        self.client_name = self.target.client_name or f"megagate-{socket.gethostname()}-{os.getpid()}"
        self._idle: list[_Connection] = []
        self._opened = [0]  # connections open now, in use or idle
        self._slots = anyio.Semaphore(max_connections)
        self._in_flight = 0
        self._closed = False
        self._drained: anyio.Event | None = None

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisClient:
        """A client for a redis://, rediss:// or unix:// URL (`core.redis_url`); ValueError when it is not usable."""
        return cls(parse_redis_url(url), **settings)

    @property
    def open_connections(self) -> int:
        """Connections open now: in use by a call, and idle."""
        return self._opened[0]

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *command: bytes | str | int | float) -> Reply:
        """Send one command and return its reply; an error reply is raised as ReplyError, anything else that goes
        wrong (refused, reset, timed out, all connections busy, a reply that makes no sense) as RedisError."""
        if self._closed:
            raise RedisError("the Redis client is closed")
        now = time.monotonic()
        deadline = now + self.timeout
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait_for_slot(deadline)
        self._in_flight += 1
        try:
            return await self._execute(encode(*command), deadline)
        finally:
            self._in_flight -= 1
            self._slots.release()
            if self._drained is not None and self._in_flight == 0:
                self._drained.set()

    async def _wait_for_slot(self, deadline: float) -> None:
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                await self._slots.acquire()
        except TimeoutError:
            raise RedisError(
                f"no Redis connection free within {self.timeout:g} s (all {self.max_connections} in use; "
                "[pool] redis_max_connections)"
            ) from None

    async def _execute(self, request: bytes, deadline: float) -> Reply:
        retried = False
        while True:  # once more on a fresh connection when a stale idle one failed (the others may be stale too)
            connection = await self._connect(deadline) if retried else await self._checkout(deadline)
            try:
                reply = await connection.call(request, deadline)
            except _Lost as lost:
                await connection.aclose()
                if connection.reused and not lost.answered and not retried:
                    retried = True  # a stale idle connection: the server never saw the command
                    continue
                raise
            except BaseException:  # timed out, cancelled, or a reply that could not be read: the connection is spent
                await connection.aclose()
                raise
            if isinstance(reply, ReplyError):
                if self._closed or str(reply).startswith(NOT_THE_PRIMARY):
                    await connection.aclose()
                else:
                    self._checkin(connection)
                raise reply
            if self._closed:
                await connection.aclose()
            else:
                self._checkin(connection)
            return reply

    async def _checkout(self, deadline: float) -> _Connection:
        idle = self._idle
        if idle and deadline - idle[0].idle_since > self.idle_timeout + self.timeout:
            now = time.monotonic()
            while idle and now - idle[0].idle_since > self.idle_timeout:
                await idle.pop(0).aclose()  # the oldest idle ones first: a burst's extra connections
        if idle:
            return idle.pop()
        return await self._connect(deadline)

    def _checkin(self, connection: _Connection) -> None:
        connection.reused, connection.idle_since = True, time.monotonic()
        self._idle.append(connection)

    async def _connect(self, deadline: float) -> _Connection:
        target = self.target
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                stream = await open_stream(target.host, target.port, self.ssl_context, path=target.path,
                                           keepalive=True)  # fmt: skip
        except TimeoutError:
            raise RedisError(f"cannot connect to Redis at {target.where} (timed out)") from None
        except (*_TRANSPORT_ERRORS, ssl.SSLError) as exc:
            raise RedisError(f"cannot connect to Redis at {target.where} ({_reason(exc)})") from None
        connection = _Connection(stream, target.where, self._opened)
        try:
            for command in self._handshake():
                reply = await connection.call(encode(*command), deadline)
                if isinstance(reply, ReplyError):  # its text never holds the password
                    raise RedisError(f"Redis at {target.where} refused {command[0]}: {reply}")
        except RedisError as error:
            await connection.aclose()
            raise RedisError(f"{error}, while connecting") from None
        except BaseException:
            await connection.aclose()
            raise
        return connection

    def _handshake(self) -> list[tuple[str | int, ...]]:
        target, commands = self.target, list[tuple[str | int, ...]]()
        if target.password is not None:
            commands.append(
                ("AUTH", target.username, target.password) if target.username else ("AUTH", target.password)
            )
        if target.db:
            commands.append(("SELECT", target.db))
        commands.append(("CLIENT", "SETNAME", self.client_name))
        return commands

    async def aclose(self) -> None:
        """Close the idle connections, wait (within the timeout) for calls in flight; theirs close as they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()
        if self._in_flight:
            self._drained = anyio.Event()
            with anyio.move_on_after(self.timeout), anyio.CancelScope(shield=True):
                await self._drained.wait()

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def tls_context(target: RedisTarget) -> ssl.SSLContext:
    """The TLS settings of a rediss:// URL: the system's CAs or `ssl_ca_certs` alone (a provider's CA), a client
    certificate, and verification as `ssl_cert_reqs` says. A missing or unreadable file is a ValueError naming it."""
    try:
        context = ssl.create_default_context(cafile=target.ca_certs)
        if target.certfile is not None:
            context.load_cert_chain(target.certfile, target.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS files for Redis at {target.where}: {_reason(exc)}") from None
    context.check_hostname = target.check_hostname and target.cert_reqs != "none"
    context.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
                           "none": ssl.CERT_NONE}[target.cert_reqs]  # fmt: skip
    return context
