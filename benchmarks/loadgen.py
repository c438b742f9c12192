"""A small load generator (asyncio protocols + httptools) that counts SSE events and first-byte times.

python -m benchmarks.loadgen PORT MODE CONCURRENCY SECONDS MODEL  ->  one JSON line of results on stdout.
MODE is `plain` or `stream`. Each of CONCURRENCY keep-alive connections sends requests back to back until SECONDS
have passed; a request still open then is waited for (bounded), so every stream is counted whole or incomplete.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

import httptools

from benchmarks.mock_upstream import CHUNKS, EXPECTED_STREAM


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, request: bytes) -> asyncio.Future[None]:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.first_byte: float | None = None
        self.done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done and not self.done.done():
                self.done.set_exception(exc)

    def on_body(self, body: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.done and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))


def request_bytes(port: int, model: str, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "Hello, benchmark!"}],
            "max_tokens": 100,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (port, len(body), body)
    )


async def worker(port: int, request: bytes, stream: bool, deadline: float, out: dict[str, list[float]]) -> None:
    loop = asyncio.get_running_loop()
    client: Client | None = None
    while time.perf_counter() < deadline:
        try:
            if client is None:
                _, client = await loop.create_connection(Client, "127.0.0.1", port)
            start = time.perf_counter()
            await asyncio.wait_for(client.start(request), 30)
            end = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - every failure is counted, the worker reconnects
            if os.environ.get("LOADGEN_DEBUG"):
                print(repr(exc), file=sys.stderr)
            out["errors"].append(1.0)
            if client and client.transport:
                client.transport.close()
            client = None
            continue
        status, body, first_byte = client.status, b"".join(client.body), client.first_byte
        if not client.keep_alive:  # e.g. hypercorn's keep_alive_max_requests: reconnect, as any client does
            assert client.transport is not None
            client.transport.close()
            client = None
        if status != 200:
            out["errors"].append(1.0)
            continue
        out["latency"].append(end - start)
        if stream:
            out["ttfb"].append((first_byte or end) - start)
            if body == EXPECTED_STREAM:
                out["chunks"].append(float(CHUNKS))
            else:
                out["incomplete"].append(1.0)
    if client and client.transport:
        client.transport.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(port: int, mode: str, concurrency: int, seconds: float, model: str) -> dict[str, float]:
    stream = mode == "stream"
    out: dict[str, list[float]] = {"latency": [], "ttfb": [], "chunks": [], "errors": [], "incomplete": []}
    request = request_bytes(port, model, stream)
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker(port, request, stream, deadline, out) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(out["latency"]),
        "req_per_s": len(out["latency"]) / elapsed,
        "p50_ms": percentile(out["latency"], 0.5) * 1000,
        "p99_ms": percentile(out["latency"], 0.99) * 1000,
        "ttfb_p50_ms": percentile(out["ttfb"], 0.5) * 1000,
        "ttfb_p99_ms": percentile(out["ttfb"], 0.99) * 1000,
        "chunks_per_s": sum(out["chunks"]) / elapsed,
        "chunks": sum(out["chunks"]),
        "errors": len(out["errors"]),
        "incomplete": len(out["incomplete"]),
        "elapsed": elapsed,
        "mean_ms": statistics.fmean(out["latency"]) * 1000 if out["latency"] else 0.0,
    }


if __name__ == "__main__":
    port, mode, concurrency, seconds, model = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(int(port), mode, int(concurrency), float(seconds), model))))
