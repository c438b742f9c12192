"""One suite for both upstream transports, against a raw HTTP/1.1 server scripted per connection, on both loops."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme

from megagate.core.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from megagate.serve import free_port
from megagate.upstream import Origin, Timeouts, Transport
from megagate.upstream.fast_transport import FastTransport
from megagate.upstream.httpcore_transport import HttpcoreTransport
from tests.http_wire import RequestReader

pytestmark = pytest.mark.anyio
BODY = b'{"hello": "world"}'
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n" + BODY
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"9\r\ndata: a\n\n\r\n9\r\ndata: b\n\n\r\n0\r\n\r\n"
)
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nuntil the end"


@dataclass
class RawServer:
    """Answers each request with the next scripted step: (response bytes, what to do after)."""

    steps: list[tuple[bytes, str]] = field(default_factory=list)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with stream:
            reader = RequestReader(stream)
            while (request := await reader.next()) is not None:
                head = request[0]
                self.requests.append(head)
                response, after = self.steps.pop(0) if self.steps else (OK, "keep")
                if after == "hang":
                    await anyio.sleep(30)
                await stream.send(response)
                if after == "stall":
                    await anyio.sleep(30)
                if after == "close":
                    return
                if after == "reset":
                    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                    raw.setsockopt(
                        __import__("socket").SOL_SOCKET,
                        __import__("socket").SO_LINGER,
                        b"\x01\x00\x00\x00\x00\x00\x00\x00",
                    )
                    return


@pytest.fixture
async def server() -> AsyncIterator[tuple[RawServer, Origin]]:
    raw = RawServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, raw.handle)
        yield raw, Origin("http", "127.0.0.1", port)
        group.cancel_scope.cancel()


TRANSPORTS: dict[str, Callable[..., Transport]] = {"fast": FastTransport, "httpcore": HttpcoreTransport}


@pytest.fixture(params=list(TRANSPORTS))
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def build(ssl_context: ssl.SSLContext | None = None, **timeouts: Any) -> Transport:
        transport = TRANSPORTS[request.param](timeouts=Timeouts(**timeouts), max_connections=2, ssl_context=ssl_context)
        made.append(transport)
        return transport

    yield build
    for transport in made:
        await transport.aclose()


async def fetch(transport: Transport, origin: Origin, body: bytes = BODY) -> tuple[int, bytes]:
    headers = [(b"content-length", str(len(body)).encode())]
    async with transport.stream(b"POST", origin, b"/v1/x", headers, body) as response:
        return response.status, await response.read()


async def test_content_length_body_and_keepalive_reuse(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    transport = make()
    for _ in range(3):
        assert await fetch(transport, origin) == (200, BODY)
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"host: 127.0.0.1:" in raw.requests[0].lower()


async def test_chunked_body(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(CHUNKED, "keep")]
    transport = make()
    assert await fetch(transport, origin) == (200, b"data: a\n\ndata: b\n\n")
    assert await fetch(transport, origin) == (200, BODY)
    assert raw.connections == 1


async def test_close_delimited_body_and_no_reuse(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(CLOSE_DELIMITED, "close")]
    transport = make()
    assert await fetch(transport, origin) == (200, b"until the end")
    assert await fetch(transport, origin) == (200, BODY)
    assert raw.connections == 2


async def test_upstream_closing_an_idle_connection_is_survived(server: tuple[RawServer, Origin], make: Any) -> None:
    """The server closes a kept-alive connection after answering; the next request must still succeed."""
    raw, origin = server
    raw.steps = [(OK, "close")]
    transport = make()
    assert await fetch(transport, origin) == (200, BODY)
    await anyio.sleep(0.05)
    assert await fetch(transport, origin) == (200, BODY)


async def test_reset_mid_body_is_a_protocol_error(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(OK[:-5], "reset")]
    transport = make()
    with pytest.raises(UpstreamProtocolError) as caught:
        await fetch(transport, origin)
    assert "reset" in caught.value.message or "closed" in caught.value.message, caught.value.message  # said in words
    assert await fetch(transport, origin) == (200, BODY)  # the broken connection was not pooled


async def test_truncated_framed_body_is_a_protocol_error(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(OK[:-5], "close")]
    with pytest.raises(UpstreamProtocolError):
        await fetch(make(), origin)


async def test_slow_headers_hit_the_first_byte_timeout(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(OK, "hang")]
    with pytest.raises(UpstreamTimeout):
        await fetch(make(first_byte=0.2), origin)


async def test_a_stalled_body_hits_the_read_timeout_on_a_reused_connection(
    server: tuple[RawServer, Origin], make: Any
) -> None:
    """The fast transport's read timer is armed once per connection; a later, shorter deadline must still fire."""
    raw, origin = server
    raw.steps = [(OK, "keep"), (CHUNKED[:-5], "stall")]
    transport = make(first_byte=20.0, read=0.3)
    assert await fetch(transport, origin) == (200, BODY)  # its reads armed the timer for the long first-byte budget
    with anyio.fail_after(5), pytest.raises(UpstreamTimeout):
        await fetch(transport, origin)
    assert raw.connections == 1


async def test_unreachable_upstream_is_a_connect_error(make: Any) -> None:
    with pytest.raises(UpstreamConnectError):
        await fetch(make(connect=1.0), Origin("http", "127.0.0.1", free_port()))


async def test_half_read_response_closes_the_connection(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(CHUNKED[:-5], "stall")]
    transport = make()
    async with transport.stream(b"GET", origin, b"/", [], b"") as response:
        async for _ in response.aiter_bytes():
            break
    assert await fetch(transport, origin) == (200, BODY)
    assert raw.connections == 2


async def test_cancelled_requests_release_their_slots(server: tuple[RawServer, Origin], make: Any) -> None:
    raw, origin = server
    raw.steps = [(OK, "hang")] * 4
    transport = make(pool=0.5)
    for _ in range(4):  # twice max_connections: a leaked slot would make the last fetch time out
        with anyio.move_on_after(0.05):
            await fetch(transport, origin)
    raw.steps = []
    assert await fetch(transport, origin) == (200, BODY)


async def test_tls_against_a_local_ca(make: Any) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    raw = RawServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    from anyio.streams.tls import TLSListener

    async with listener, anyio.create_task_group() as group:
        group.start_soon(TLSListener(listener, server_context, standard_compatible=False).serve, raw.handle)
        origin = Origin("https", "localhost", port)
        transport = make(ssl_context=client_context)
        assert await fetch(transport, origin) == (200, BODY)
        assert await fetch(transport, origin) == (200, BODY)
        assert raw.connections == 1
        with pytest.raises(UpstreamConnectError):
            await fetch(make(), origin)  # the system trust store does not know the local CA
        group.cancel_scope.cancel()
