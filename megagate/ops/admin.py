"""Operator routes under /admin, served only to a request bearing the configured admin token.

`GET /admin/keys` lists every upstream key by its stable id and mask with its live state; never the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import msgspec

from megagate.asgi import Receive, Scope, Send, presented_key, send_error, send_json
from megagate.core.errors import AuthenticationFailed
from megagate.pool import KeyPool, KeyReport


class KeyList(msgspec.Struct):
    data: list[KeyReport]
    object: str = "list"


_encoder = msgspec.json.Encoder()


class AdminGuard:
    """Let a request through to `endpoint` only with the admin token (compared in constant time)."""

    def __init__(self, endpoint: object, token: str) -> None:
        self.endpoint = endpoint
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        presented = presented_key(scope)
        if presented is None or not hmac.compare_digest(presented, self.token):
            await send_error(send, AuthenticationFailed("This admin route needs the admin token as a Bearer token."))
            return
        await self.endpoint(scope, receive, send)  # type: ignore[operator]


class KeysApp:
    def __init__(self, pools: Mapping[str, KeyPool]) -> None:
        self.pools = pools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reports = [report for pool in self.pools.values() for report in await pool.report()]
        await send_json(send, 200, _encoder.encode(KeyList(reports)))
