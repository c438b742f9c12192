"""A fault-injecting proxy in front of a real redis-server, for the shared store's failure tests.

`mode` decides what the next packet from a client meets: "pass" forwards it and its reply; "reset" answers
nothing and resets the connection (SO_LINGER 0: an RST, as a failing load balancer sends); "half_reply" forwards
the command, which Redis runs, then sends half of the reply and resets; "silent" never answers; "readonly" answers
a failover's READONLY error; "malformed" answers an integer that is not one. Every command forwarded to Redis is
counted in `forwarded`, so a test can tell whether one was sent twice.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import anyio.abc

from megagate.pool.resp_reply import ReplyReader

Mode = Literal["pass", "reset", "half_reply", "silent", "readonly", "malformed"]
READONLY = b"-READONLY You can't write against a read only replica.\r\n"


def reset(stream: anyio.abc.SocketStream) -> None:
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultyRedis:
    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.mode: Mode = "pass"
        self.port = 0
        self.connections = 0  # accepted so far
        self.forwarded: list[bytes] = []  # every command Redis received through the proxy

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with client, await anyio.connect_tcp("127.0.0.1", self.redis_port) as server:
            while True:
                try:
                    command = await client.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                mode = self.mode
                if mode == "reset":
                    reset(client)
                    return
                if mode == "silent":
                    await anyio.sleep_forever()
                if mode in ("readonly", "malformed"):
                    await client.send(READONLY if mode == "readonly" else b":12x\r\n")
                    continue
                self.forwarded.append(command)
                await server.send(command)
                reply = await _one_reply(server)
                if mode == "half_reply":
                    await client.send(reply[: max(1, len(reply) // 2)])
                    reset(client)
                    return
                await client.send(reply)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[FaultyRedis]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()


async def _one_reply(server: anyio.abc.SocketStream) -> bytes:
    reader, received = ReplyReader(), b""
    while True:
        data = await server.receive()
        received += data
        if reader.feed(data):
            return received
