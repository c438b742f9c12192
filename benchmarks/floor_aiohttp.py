"""The other floor: the same bare passthrough on aiohttp's own server and client, no ASGI server at all.

Beside `floor.py` (a raw ASGI app under hypercorn) it shows what the server itself costs: the gap between the two
floors is hypercorn's (and the ASGI layer's) share, which no work inside megagate can remove.
Run: MOCK_PORT=P python -m benchmarks.floor_aiohttp PORT   (needs aiohttp: pip install -e '.[bench]')
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '9200')}/v1/chat/completions"
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(UPSTREAM, data=body, headers={"content-type": "application/json"}) as upstream:
        content_type = upstream.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            return web.Response(
                status=upstream.status, body=await upstream.read(), headers={"content-type": content_type}
            )
        response = web.StreamResponse(status=upstream.status, headers={"content-type": content_type})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def client(app: web.Application) -> AsyncIterator[None]:
    # The same connection cap as the hypercorn floor and megagate with unlimited keys.
    connector = aiohttp.TCPConnector(limit=4096, limit_per_host=4096)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        app[SESSION] = session
        yield


def main() -> None:
    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_post("/v1/chat/completions", relay)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, backlog=4096, print=None)


if __name__ == "__main__":
    main()
