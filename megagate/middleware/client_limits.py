"""ClientLimitsMiddleware: what an authenticated client may do, once its request is parsed.

It runs inside DefaultsMiddleware: a model outside the client's allowlist (also one named in its `fallback_models`)
gets 403, and a client over its `rpm` / `tpm` gets 429 with a Retry-After, counted with the same sliding windows as
the upstream key scheduler (one window per client, held by `auth.Client`).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send
from megagate.config import ClientConfig
from megagate.core.errors import PermissionDenied, RateLimited
from megagate.state import RequestState, get_client, get_state


class SharedWindows(Protocol):
    """Client windows shared by every process (`pool.client_windows.RedisClientWindows`)."""

    async def admit(self, name: str, rpm: int | None, tpm: int | None, tokens: int) -> str | float:
        """An entry to settle later, or the seconds to wait before the client may send this request."""
        ...

    async def settle(self, name: str, entry: str, tokens_used: int) -> None: ...


class ClientLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        clock: Clock = time.monotonic,
        default_max_tokens: int = 1024,
        shared: SharedWindows | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.default_max_tokens = default_max_tokens
        self.shared = shared  # None: each client's window lives in this process (auth.Client.window)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = get_client(scope) if scope["type"] == "http" else None
        state = get_state(scope) if client is not None else None
        if client is None or state is None:
            await self.app(scope, receive, send)
            return
        request = state.request
        for model in [request.model, *(request.fallback_models or ())]:
            if not client.config.allows(model):
                raise PermissionDenied(f"This client may not use the model '{model}'.", param="model")
        window = client.window
        if window is None:
            await self.app(scope, receive, send)
            return
        tokens = request.estimated_tokens(self.default_max_tokens)
        if self.shared is not None:
            await self._shared(client.config, tokens, state, scope, receive, send)
            return
        now = self.clock()
        window.prune(now)
        wait = window.ready_at(tokens, now) - now
        if wait > 0:
            raise _over(client.config, wait)
        entry = window.record(tokens, now)
        try:
            await self.app(scope, receive, send)
        finally:
            if state.usage is not None:
                window.settle(entry, state.usage.total, self.clock())

    async def _shared(
        self, config: ClientConfig, tokens: int, state: RequestState, scope: Scope, receive: Receive, send: Send
    ) -> None:
        assert self.shared is not None
        admitted = await self.shared.admit(config.name, config.rpm, config.tpm, tokens)
        if isinstance(admitted, float):
            raise _over(config, admitted)
        try:
            await self.app(scope, receive, send)
        finally:
            if state.usage is not None:
                with anyio.CancelScope(shield=True):
                    await self.shared.settle(config.name, admitted, state.usage.total)


def _over(config: ClientConfig, wait: float) -> RateLimited:
    return RateLimited(f"This client is over its rate limit ({_limits(config)}); retry in {wait:.1f} s.",
                       retry_after=wait)  # fmt: skip


def _limits(config: ClientConfig) -> str:
    parts: list[Any] = []
    if config.rpm:
        parts.append(f"{config.rpm} requests/min")
    if config.tpm:
        parts.append(f"{config.tpm} tokens/min")
    return ", ".join(parts)
