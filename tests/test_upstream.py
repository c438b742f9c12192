"""The upstream transport against a real server on 127.0.0.1: reuse, errors, timeouts, under both loops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from megagate.core.errors import UpstreamConnectError, UpstreamTimeout
from megagate.fake import FakeUpstream
from megagate.serve import free_port, serve_together
from megagate.upstream import Origin, Timeouts, Transport
from megagate.upstream.httpcore_transport import HttpcoreTransport

pytestmark = pytest.mark.anyio
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
async def served_fake() -> AsyncIterator[tuple[FakeUpstream, Origin]]:
    fake = FakeUpstream()
    port = free_port()
    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(serve_together, [(fake, "127.0.0.1", port)], shutdown)
        for _ in range(200):
            try:
                await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                break
            except OSError:
                await anyio.sleep(0.01)
        yield fake, Origin("http", "127.0.0.1", port)
        shutdown.set()


def headers(body: bytes, **extra: str) -> list[tuple[bytes, bytes]]:
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return pairs + [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]


def transports(**timeouts: Any) -> list[Transport]:
    return [HttpcoreTransport(timeouts=Timeouts(**timeouts), max_connections=4)]


async def test_plain_request_and_keepalive_reuse(served_fake: tuple[FakeUpstream, Origin]) -> None:
    fake, origin = served_fake
    for transport in transports():
        for _ in range(3):
            async with transport.stream(b"POST", origin, b"/v1/chat/completions", headers(BODY), BODY) as response:
                assert response.status == 200
                assert b'"chat.completion"' in await response.read()
        ports = {r.client_port for r in fake.requests}
        assert len(ports) == 1
        await transport.aclose()


async def test_unreachable_upstream_is_a_connect_error() -> None:
    for transport in transports(connect=1.0):
        with pytest.raises(UpstreamConnectError):
            async with transport.stream(b"POST", Origin("http", "127.0.0.1", free_port()), b"/", headers(BODY), BODY):
                pass
        await transport.aclose()


async def test_slow_headers_hit_the_first_byte_timeout(served_fake: tuple[FakeUpstream, Origin]) -> None:
    _, origin = served_fake
    for transport in transports(first_byte=0.2):
        with pytest.raises(UpstreamTimeout):
            request_headers = headers(BODY, x_fake_fault='{"hang": true}')
            async with transport.stream(b"POST", origin, b"/v1/chat/completions", request_headers, BODY):
                pass
        await transport.aclose()


async def test_half_read_response_is_not_reused(served_fake: tuple[FakeUpstream, Origin]) -> None:
    _, origin = served_fake
    body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    for transport in transports():
        async with transport.stream(b"POST", origin, b"/v1/chat/completions", headers(body), body) as response:
            async for _ in response.aiter_bytes():
                break
        async with transport.stream(b"POST", origin, b"/v1/chat/completions", headers(BODY), BODY) as response:
            assert response.status == 200
            await response.read()
        await transport.aclose()


async def test_cancelled_request_releases_its_connection_slot(served_fake: tuple[FakeUpstream, Origin]) -> None:
    _, origin = served_fake
    for transport in transports(pool=0.5):
        for _ in range(6):  # more than max_connections: a leaked slot would make these time out
            with anyio.move_on_after(0.05):
                hang = headers(BODY, x_fake_fault='{"hang": true}')
                async with transport.stream(b"POST", origin, b"/v1/chat/completions", hang, BODY):
                    pass
        async with transport.stream(b"POST", origin, b"/v1/chat/completions", headers(BODY), BODY) as response:
            assert response.status == 200
            await response.read()
        await transport.aclose()
