"""megagate's Redis client: the RESP parser (any reply, cut anywhere) and the client against a real redis-server."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.errors import RedisError
from megagate.pool.resp import Incomplete, RedisClient, ReplyError, encode, parse
from tests.conftest import RedisServer

replies = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


def serialize(reply: Any) -> bytes:
    """A reply as Redis writes it (RESP2)."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(serialize(item) for item in reply)


@given(replies, st.data())
def test_any_reply_parses_whole_and_is_incomplete_when_cut(reply: Any, data: st.DataObject) -> None:
    wire = serialize(reply)
    assert parse(wire) == (reply, len(wire))
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(Incomplete):
        parse(wire[:cut])


def test_simple_strings_errors_and_null_arrays() -> None:
    assert parse(b"+OK\r\n") == (b"OK", 5)
    error, end = parse(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(error, ReplyError) and str(error) == "NOSCRIPT No matching script" and end == 30
    assert parse(b"*-1\r\n") == (None, 5)
    with pytest.raises(RedisError):
        parse(b"?what\r\n")


def test_commands_are_bulk_string_arrays() -> None:
    assert encode("GET", b"k\r\n", 3, 1.5) == b"*4\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n$1\r\n3\r\n$3\r\n1.5\r\n"


pytestmark_anyio = pytest.mark.anyio


@pytestmark_anyio
async def test_commands_scripts_and_error_replies(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, timeout=2) as client:
        assert await client.execute("SET", "resp:k", "v") == b"OK"
        assert await client.execute("GET", "resp:k") == b"v"
        with pytest.raises(ReplyError, match="wrong number of arguments"):
            await client.execute("GET")
        assert await client.execute("GET", "resp:k") == b"v"  # the connection survives an error reply
        script = client.register_script("return {KEYS[1], tonumber(ARGV[1]) + 1, false}")
        await client.execute("SCRIPT", "FLUSH")
        assert await script(keys=["resp:a"], args=[41]) == [b"resp:a", 42, None]  # NOSCRIPT: sent with EVAL
        assert await script(keys=["resp:a"], args=[1]) == [b"resp:a", 2, None]  # now cached: EVALSHA
        assert len(client._idle) == 1  # one command at a time here: one connection, reused


@pytestmark_anyio
async def test_password_and_database_from_the_url(tmp_path: Any) -> None:
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        async with RedisClient.from_url(url, timeout=2) as client:
            await client.execute("SET", "resp:db", "three")
            assert await client.execute("CLIENT", "INFO") is not None
            assert b"db=3" in await client.execute("CLIENT", "INFO")
        wrong = RedisClient.from_url(f"redis://:nope@127.0.0.1:{server.port}/0", timeout=2)
        with pytest.raises(RedisError, match="refused AUTH") as refused:
            await wrong.execute("PING")
        assert "nope" not in str(refused.value)
    finally:
        server.stop()


@pytestmark_anyio
async def test_a_restarted_redis_is_reached_through_fresh_connections(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    try:
        async with RedisClient.from_url(server.url, timeout=2) as client:
            assert await client.execute("PING") == b"PONG"
            server.stop()
            with pytest.raises(RedisError):
                await client.execute("PING")
            server.start()
            assert await client.execute("PING") == b"PONG"
            await client.execute("PING")
            async with anyio.create_task_group() as group:  # two idle connections, both stale after a restart
                for _ in range(2):
                    group.start_soon(client.execute, "PING")
            server.stop()
            server.start()
            assert await client.execute("PING") == b"PONG"  # the stale one is retried once, on a fresh connection
    finally:
        server.stop()


@pytestmark_anyio
async def test_a_silent_server_is_a_timeout_and_a_cancelled_call_spends_its_connection() -> None:
    async def never_answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, never_answer)
        client = RedisClient("127.0.0.1", port, timeout=0.3)
        with anyio.fail_after(3), pytest.raises(RedisError, match="did not answer"):
            await client.execute("PING")
        with anyio.move_on_after(0.05):
            await client.execute("PING")
        assert client._idle == []  # neither connection is reused: their replies could still arrive
        group.cancel_scope.cancel()
