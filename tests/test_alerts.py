"""Budget alerts against a local HTTP receiver: each threshold of each budget and period posted once, across two
gateways sharing Redis, retried when the receiver fails, never in a request's path."""

from __future__ import annotations

import secrets

import anyio
import anyio.abc
import msgspec
import pytest

from tests.conftest import RedisServer
from tests.http_wire import RequestReader
from tests.inprocess import call
from tests.test_budgets import ASK, HEADERS, gateway_of, settings

pytestmark = pytest.mark.anyio


class Receiver:
    """A minimal HTTP/1.1 server that keeps each JSON body posted to it; the first `failures` answers are 500s."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.failures = failures
        self.port = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = RequestReader(stream)
            while (request := await reader.next()) is not None:
                body = request[1]
                if self.failures:
                    self.failures -= 1
                    await stream.send(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    continue
                self.bodies.append(msgspec.json.decode(body))
                await stream.send(b"HTTP/1.1 204 No Content\r\n\r\n")


async def test_each_threshold_is_posted_once_across_gateways_and_retried(redis_server: RedisServer) -> None:
    receiver = Receiver(failures=1)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    receiver.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    pool = {"store": "redis", "redis_url": redis_server.url, "prefix": secrets.token_hex(4)}
    config = settings(0.10, pool=pool, alerts={"webhook": f"http://127.0.0.1:{receiver.port}/hooks/budget",
                                              "thresholds": [0.5, 0.8, 1.0]})  # fmt: skip
    gateways = [gateway_of(config)[0] for _ in range(2)]
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, receiver.handle)
        async with gateways[0].running(), gateways[1].running():
            statuses = [(await call(gateways[n % 2], body=ASK, headers=HEADERS)).status for n in range(6)]
            with anyio.fail_after(10):
                while len(receiver.bodies) < 2:  # noqa: ASYNC110 -- the receiver's count, polled
                    await anyio.sleep(0.05)
            await anyio.sleep(0.2)  # nothing more comes
        group.cancel_scope.cancel()
    assert statuses == [200, 200, 200, 200, 429, 429]  # $0.02007 each: 0.0602 passes half, 0.0803 passes 0.8
    assert sorted(b["threshold"] for b in receiver.bodies) == [0.5, 0.8]  # each once (one after a 500, retried)
    first = next(b for b in receiver.bodies if b["threshold"] == 0.5)
    assert first["type"] == "budget_threshold" and first["budget"] == {
        "kind": "client", "name": "team-a", "period": "daily", "limit_usd": 0.1}  # fmt: skip
    assert 0.05 <= float(first["spent_usd"]) < 0.08  # type: ignore[arg-type]
