"""megagate's Redis client: the RESP reader (any reply, in any pieces, in linear time), the client against a real
redis-server, and every failure a fault-injecting proxy can produce ending as the one RedisError."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.errors import RedisError
from megagate.core.redis_url import RedisTarget
from megagate.pool.resp import RedisClient
from megagate.pool.resp_reply import ProtocolError, ReplyError, ReplyReader, encode
from tests.conftest import RedisServer
from tests.redis_faults import FaultyRedis

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


def read(*pieces: bytes) -> Any:
    reader = ReplyReader()
    done = [reader.feed(piece) for piece in pieces]
    assert done[-1] and not any(done[:-1])
    return reader.reply


@given(replies, st.lists(st.integers(min_value=1, max_value=400), max_size=8))
def test_any_reply_in_any_pieces_reads_whole_only_at_its_last_byte(reply: Any, cuts: list[int]) -> None:
    wire = serialize(reply)
    points = sorted({c for c in cuts if c < len(wire)})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert read(*pieces) == reply


def test_simple_strings_errors_null_and_empty_arrays() -> None:
    assert read(b"+OK\r\n") == b"OK"
    error = read(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(error, ReplyError) and str(error) == "NOSCRIPT No matching script"
    assert read(b"*-1\r\n") is None and read(b"*0\r\n") == [] and read(b"*2\r\n*0\r\n:1\r\n") == [[], 1]


@pytest.mark.parametrize("wire", [b":12x\r\n", b": 1\r\n", b":+1\r\n", b"$1_0\r\n", b"*two\r\n", b"?what\r\n"])
def test_what_is_not_resp_is_a_protocol_error_of_the_client(wire: bytes) -> None:
    with pytest.raises(ProtocolError):  # a RedisError: the store's one error, never a ValueError
        ReplyReader().feed(wire)


def test_a_second_reply_to_one_command_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="more than one reply"):
        ReplyReader().feed(b"+OK\r\n+OK\r\n")


def test_a_large_reply_in_small_pieces_is_read_in_linear_work() -> None:
    """Each element is parsed once however the reply is cut: the first client re-parsed from the start on every
    piece (20,000 elements in 7-byte pieces: about 30,000 pieces x 20,000 elements)."""

    class Counting(ReplyReader):
        calls = 0

        def _element(self) -> Any:
            Counting.calls += 1
            return super()._element()

    elements = [b"%05d" % n for n in range(20_000)]
    wire = serialize(elements)
    reader = Counting()
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    assert [reader.feed(p) for p in pieces][-1] and reader.reply == elements
    assert Counting.calls <= len(elements) + 1 + len(pieces)


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
        assert await client.execute("GET", "resp:k") == b"v"  # the connection survives an ordinary error reply
        script = client.register_script("return {KEYS[1], tonumber(ARGV[1]) + 1, false}")
        await client.execute("SCRIPT", "FLUSH")
        assert await script(keys=["resp:a"], args=[41]) == [b"resp:a", 42, None]  # NOSCRIPT: sent with EVAL
        assert await script(keys=["resp:a"], args=[1]) == [b"resp:a", 2, None]  # now cached: EVALSHA
        assert client.open_connections == 1  # one command at a time here: one connection, reused


@pytestmark_anyio
async def test_password_database_and_client_name_from_the_url(tmp_path: Any) -> None:
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        async with RedisClient.from_url(url, timeout=2) as client:
            await client.execute("SET", "resp:db", "three")
            info = await client.execute("CLIENT", "INFO")
            assert b"db=3" in info and b"name=megagate-" in info  # CLIENT SETNAME megagate-<host>-<pid>
        async with RedisClient.from_url(url + "?client_name=edge-7", timeout=2) as named:
            assert b"name=edge-7 " in await named.execute("CLIENT", "INFO")
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
        client = RedisClient(RedisTarget(port=port), timeout=0.3)
        with anyio.fail_after(3), pytest.raises(RedisError, match="did not answer"):
            await client.execute("PING")
        with anyio.move_on_after(0.05):
            await client.execute("PING")
        assert client.open_connections == 0  # neither connection is reused: their replies could still arrive
        group.cancel_scope.cancel()


@pytestmark_anyio
async def test_a_reset_during_auth_is_a_redis_error_and_the_next_call_connects(tmp_path: Any) -> None:
    """The handshake ran outside the call's error handling: a reset there escaped as anyio.BrokenResourceError."""
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    try:
        async with FaultyRedis(server.port).serving() as proxy:
            proxy.mode = "reset"  # the first packet is AUTH
            client = RedisClient.from_url(f"redis://:s3cret@127.0.0.1:{proxy.port}/2", timeout=2)
            with pytest.raises(RedisError, match="while connecting") as caught:
                await client.execute("PING")
            assert type(caught.value) is RedisError and "s3cret" not in str(caught.value)
            proxy.mode = "pass"
            assert await client.execute("PING") == b"PONG"
            await client.aclose()
    finally:
        server.stop()


@pytestmark_anyio
async def test_a_command_whose_reply_had_started_is_never_sent_again(redis_server: RedisServer) -> None:
    async with FaultyRedis(redis_server.port).serving() as proxy, RedisClient.from_url(proxy.url, timeout=2) as client:
        await client.execute("SET", "resp:once", 0)  # the connection is now a reused one
        proxy.mode = "half_reply"
        with pytest.raises(RedisError):
            await client.execute("INCRBY", "resp:once", 1_000_000_000)  # its reply cut in the middle by a reset
        proxy.mode = "pass"
        assert await client.execute("GET", "resp:once") == b"1000000000"  # ran once: not retried
        assert sum(b"INCRBY" in c for c in proxy.forwarded) == 1


@pytestmark_anyio
@pytest.mark.parametrize("mode", ["readonly", "malformed"])
async def test_a_failover_reply_or_garbage_closes_the_connection(redis_server: RedisServer, mode: str) -> None:
    """READONLY (a replica after a failover) or a reply that is not RESP: that connection is not used again, so
    the next one can reach the new primary."""
    async with FaultyRedis(redis_server.port).serving() as proxy, RedisClient.from_url(proxy.url, timeout=2) as client:
        assert await client.execute("PING") == b"PONG"
        proxy.mode = mode  # type: ignore[assignment]
        with pytest.raises(ReplyError if mode == "readonly" else ProtocolError):
            await client.execute("SET", "resp:f", 1)
        assert client.open_connections == 0
        proxy.mode = "pass"
        assert await client.execute("SET", "resp:f", 1) == b"OK"
        assert proxy.connections == 2


async def _peak(client: RedisClient, calls: int, seconds: float) -> int:
    """Run `calls` concurrent commands that each hold their connection `seconds`; the most open at once."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, client.open_connections)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as outer:
        outer.start_soon(watch)
        async with anyio.create_task_group() as group:
            for n in range(calls):
                group.start_soon(client.execute, "BLPOP", f"resp:none:{n}", seconds)
        outer.cancel_scope.cancel()
    return peak


@pytestmark_anyio
async def test_connections_are_bounded_and_idle_ones_are_closed_again(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, timeout=10, max_connections=32, idle_timeout=0.2) as client:
        assert await _peak(client, 300, 0.02) == 32
        async with RedisClient.from_url(redis_server.url + "?client_name=observer", timeout=2) as observer:
            listed = (await observer.execute("CLIENT", "LIST")).decode()
            assert sum(f"name={client.client_name} " in line for line in listed.splitlines()) == 32
            await anyio.sleep(0.3)
            await client.execute("PING")  # trims the idle ones on the way
            assert client.open_connections == 1
            listed = (await observer.execute("CLIENT", "LIST")).decode()
            assert sum(f"name={client.client_name} " in line for line in listed.splitlines()) == 1


@pytestmark_anyio
async def test_a_caller_waits_for_a_connection_only_within_the_timeout(redis_server: RedisServer) -> None:
    async with (
        RedisClient.from_url(redis_server.url, timeout=1, max_connections=1) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.execute, "BLPOP", "resp:none", 0.2)
        await anyio.wait_all_tasks_blocked()
        assert await client.execute("PING") == b"PONG"  # waited for the one connection, within 1 s
        group.start_soon(client.execute, "BLPOP", "resp:none", 0.5)
        await anyio.wait_all_tasks_blocked()
        client.timeout = 0.1  # this caller's bound: the connection stays busy past it
        with pytest.raises(RedisError, match="no Redis connection free"):
            await client.execute("PING")
        assert client.open_connections == 1


@pytestmark_anyio
async def test_closing_waits_for_calls_in_flight_and_their_connections_close(redis_server: RedisServer) -> None:
    client = RedisClient.from_url(redis_server.url, timeout=2)
    answers: list[Any] = []

    async def blpop() -> None:
        answers.append(await client.execute("BLPOP", "resp:none", 0.1))

    async with anyio.create_task_group() as group:
        group.start_soon(blpop)
        await anyio.wait_all_tasks_blocked()
        await client.aclose()
        assert answers == [None]  # it finished before aclose returned
    assert client.open_connections == 0
    with pytest.raises(RedisError, match="closed"):
        await client.execute("PING")
