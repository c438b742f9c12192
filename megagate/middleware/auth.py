"""AuthMiddleware: client authentication, before any body is read (the per-client policy is in `client_limits`).

It runs first, before any body is read: a `/v1/*` request must present a configured client key as
`Authorization: Bearer` or `x-api-key`, else 401. Keys are known only by their SHA-256 digests; a presented key is
hashed, looked up by digest, and confirmed with `hmac.compare_digest`. The client found is put in the scope
(`scope["state"]["megagate.client"]`) for the layers inside. With no clients configured the gateway is open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from megagate.asgi import ASGIApp, Receive, Scope, Send, presented_key, send_error
from megagate.config import ClientConfig
from megagate.core.errors import AuthenticationFailed
from megagate.core.window import SlidingWindow
from megagate.state import CLIENT_KEY, Client, route_of


class ClientDirectory:
    """Client keys by digest. `find` never compares a raw key: it hashes, looks up, then compares digests in
    constant time. Built again on a hot reload from its `previous` one: a client kept by name keeps its window
    (what it used in the last minute counts against its new limits), so a reload is no way around a limit."""

    def __init__(self, clients: Sequence[ClientConfig], previous: ClientDirectory | None = None) -> None:
        self._by_digest: dict[str, Client] = {}
        for config in clients:
            window = None
            if config.rpm or config.tpm:
                kept = previous.by_name(config.name) if previous is not None else None
                window = kept.window if kept is not None and kept.window is not None else SlidingWindow()
                window.rpm, window.tpm = config.rpm, config.tpm
            self._by_digest[config.digest] = Client(config, window)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def by_name(self, name: str) -> Client | None:
        """For the status page: a client by its configured name (never by key)."""
        return next((c for c in self._by_digest.values() if c.config.name == name), None)

    def find(self, key: bytes) -> Client | None:
        digest = hashlib.sha256(key).hexdigest()
        client = self._by_digest.get(digest)
        if client is None or not hmac.compare_digest(client.config.digest, digest):
            return None
        return client


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        clients: Sequence[ClientConfig],
        prefix: str = "/v1/",
        directory: ClientDirectory | None = None,
    ) -> None:
        self.app = app
        self.directory = directory if directory is not None else ClientDirectory(clients)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.directory or not route_of(scope).path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        client = self.directory.find(key) if key else None
        if client is None or client.config.revoked:
            reason = "No API key was given" if key is None else "The API key is not valid"
            error = AuthenticationFailed(f"{reason}. Send a megagate client key as 'Authorization: Bearer <key>'.")
            error.code = "invalid_api_key"
            await send_error(send, error, route_of(scope).format)
            return
        scope.setdefault("state", {})[CLIENT_KEY] = client
        await self.app(scope, receive, send)
