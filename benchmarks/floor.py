"""The floor: a bare raw-ASGI passthrough on megagate's default transport, no feature at all.

It measures what hypercorn and the transport cost by themselves; megagate's own work is judged against it.
Run: MOCK_PORT=P hypercorn -w 1 benchmarks.floor:app  (BENCH_TRANSPORT=httpcore for the httpcore transport)
"""

from __future__ import annotations

import os
from typing import Any

from megagate.asgi import read_body
from megagate.upstream import Origin, Timeouts
from megagate.upstream.fast_transport import FastTransport
from megagate.upstream.httpcore_transport import HttpcoreTransport

ORIGIN = Origin("http", "127.0.0.1", int(os.environ.get("MOCK_PORT", "9200")))
# The same connection cap megagate derives for unlimited keys, so the floor does not queue at thousands of streams.
transport = (HttpcoreTransport if os.environ.get("BENCH_TRANSPORT") == "httpcore" else FastTransport)(
    timeouts=Timeouts(), max_connections=4096
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = await read_body(receive, 64 * 1024 * 1024)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    async with transport.stream(b"POST", ORIGIN, b"/v1/chat/completions", headers, body) as response:
        content_type = dict(response.headers).get(b"content-type", b"application/json")
        await send(
            {"type": "http.response.start", "status": response.status, "headers": [(b"content-type", content_type)]}
        )
        async for chunk in response.aiter_bytes():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
