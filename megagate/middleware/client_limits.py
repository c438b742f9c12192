"""ClientLimitsMiddleware: what an authenticated client may do, once its request is parsed.

It runs inside DefaultsMiddleware: a model outside the client's allowlist (also one named in its `fallback_models`)
gets 403, and a client over its `rpm` / `tpm` gets 429 with a Retry-After, counted with the same sliding windows as
the upstream key scheduler (one window per client, held by `auth.Client`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from megagate.asgi import ASGIApp, Receive, Scope, Send
from megagate.config import ClientConfig
from megagate.core.errors import PermissionDenied, RateLimited
from megagate.middleware.auth import get_client
from megagate.middleware.rotation import estimate_tokens
from megagate.state import get_state


class ClientLimitsMiddleware:
    def __init__(
        self, app: ASGIApp, *, clock: Callable[[], float] = time.monotonic, default_max_tokens: int = 1024
    ) -> None:
        self.app = app
        self.clock = clock
        self.default_max_tokens = default_max_tokens

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
        tokens = estimate_tokens(request, self.default_max_tokens)
        now = self.clock()
        window.prune(now)
        wait = window.ready_at(tokens, now) - now
        if wait > 0:
            raise RateLimited(
                f"This client is over its rate limit ({_limits(client.config)}); retry in {wait:.1f} s.",
                retry_after=wait,
            )
        entry = window.record(tokens, now)
        try:
            await self.app(scope, receive, send)
        finally:
            if state.usage is not None:
                window.settle(entry, state.usage.total_tokens, self.clock())


def _limits(config: ClientConfig) -> str:
    parts: list[Any] = []
    if config.rpm:
        parts.append(f"{config.rpm} requests/min")
    if config.tpm:
        parts.append(f"{config.tpm} tokens/min")
    return ", ".join(parts)
