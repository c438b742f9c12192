"""A deliberately minimal, fast mock upstream for benchmarks: asyncio protocol + httptools, no framework.

POST /v1/chat/completions answers a fixed completion, or with `"stream": true` 100 content chunks, a usage chunk
and `data: [DONE]`; a model name ending in `-10ms` spaces the chunks 10 ms apart. Usage: python -m
benchmarks.mock_upstream PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools

CHUNKS = 100
PLAIN = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hello from the benchmark mock."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":7,"total_tokens":17}}'
)
CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)
TAIL = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench","choices":[],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":100,"total_tokens":110}}\n\ndata: [DONE]\n\n'
)
EXPECTED_STREAM = CHUNK * CHUNKS + TAIL


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Mock(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body = b""

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if b'"stream":true' in self.body.replace(b" ", b""):
            delay = 0.1 if b'-100ms"' in self.body else 0.01 if b'-10ms"' in self.body else 0.0
            asyncio.get_running_loop().create_task(self.stream(delay))
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(PLAIN), PLAIN)
            )

    async def stream(self, delay: float) -> None:
        write = self.transport.write
        write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(CHUNKS):
            if delay:
                await asyncio.sleep(delay)
            if self.transport.is_closing():
                return
            write(chunked(CHUNK))
        write(chunked(TAIL) + b"0\r\n\r\n")


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Mock, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
