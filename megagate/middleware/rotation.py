"""RotationMiddleware: lease an upstream key for each attempt, report how it went, retry on another key.

It sits inside DefaultsMiddleware (it needs the prepared request in the scope) and outside the proxy, which reads
the leased key from the request state and raises `Upstream*` errors for failures before the client saw a byte.
Rate-limit (429), auth (401/403), 5xx and connection failures are retried on a key not yet tried, up to
`max_attempts`; a timeout is not (waiting the same time again on the same model is the fallback layer's call), and a
request error (400...) never is. Every lease is released exactly once, on every path: success, error, client
disconnect, cancellation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext

import anyio

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send, header, replay_body
from megagate.config import Rotation
from megagate.core.errors import (
    MegagateError,
    NoKeyAvailable,
    UpstreamError,
)
from megagate.core.outcome import RETRIED_ON_ANOTHER_KEY, Outcome, classify
from megagate.core.request import session_of
from megagate.pool import KeyPool
from megagate.routing import Endpoint, Target
from megagate.state import Attempt, RequestState, get_state

SESSION_HEADER = b"x-session-id"  # a client's own name for its conversation, for key affinity


class RotationMiddleware:
    """Spread requests over a pool of upstream keys.

    `pools` maps upstream names to their KeyPool. Each attempt's target is `route(model, endpoint)` (megagate's is
    `routing.choose` over its config), recorded in `state.target` for the proxy to read; no target (an endpoint no
    upstream serves, a local answer) takes no lease. Without `route`, a single pool serves every request, which is
    how it is embedded on its own in front of some other app that reads `state.api_key`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        pools: Mapping[str, KeyPool],
        route: Callable[[str, Endpoint], Target | None] | None = None,
        rotation: Rotation | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        rotation = rotation or Rotation()
        self.app = app
        self.pools = dict(pools)
        self.route = route
        self.max_attempts = rotation.max_attempts
        self.max_wait = rotation.max_wait
        self.default_max_tokens = rotation.default_max_tokens
        self.affinity = rotation.affinity
        self.clock = clock

    @staticmethod
    def _session(scope: Scope, state: RequestState) -> str | None:
        given = header(scope, SESSION_HEADER)
        return given.decode("latin-1") if given else session_of(state.request)

    def _pool(self, state: RequestState) -> KeyPool | None:
        if self.route is None:
            return next(iter(self.pools.values())) if len(self.pools) == 1 else None
        state.target = self.route(state.request.model, state.endpoint)
        return self.pools.get(state.target.upstream.name) if state.target is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope) if scope["type"] == "http" else None
        pool = self._pool(state) if state is not None else None
        if state is None or pool is None:  # not a prepared request, or an upstream without keys
            await self.app(scope, receive, send)
            return
        tokens = state.request.estimated_tokens(self.default_max_tokens)
        session = self._session(scope, state) if self.affinity else None
        deadline = self.clock() + self.max_wait
        tried: set[str] = set()
        failures: list[UpstreamError] = []
        for _ in range(self.max_attempts):
            try:
                lease = await pool.acquire(
                    tokens,
                    model=state.request.model,
                    exclude=frozenset(tried),
                    max_wait=max(0.0, deadline - self.clock()),
                    session=session,
                )
            except NoKeyAvailable:
                if not failures:
                    raise
                break  # keys remain but none can serve now: report what the tried ones said
            tried.add(lease.id)
            state.api_key = lease.key
            upstream = state.target.upstream.name if state.target else ""
            attempt = Attempt(state.request.model, upstream, lease.id, started=self.clock())
            state.attempts.append(attempt)
            outcome, retry_after, error = Outcome.CANCELLED, None, None
            try:
                await self.app(scope, replay_body(state.request.encode(), receive), send)
                outcome = Outcome.SUCCESS
                return
            except UpstreamError as failure:
                outcome, retry_after, error = classify(failure), failure.retry_after, failure.message
                if state.response_started or outcome not in RETRIED_ON_ANOTHER_KEY:
                    raise
                failures.append(failure)
            except MegagateError:
                outcome = Outcome.CLIENT_ERROR
                raise
            finally:
                state.api_key = None
                attempt.outcome, attempt.ended = outcome, self.clock()
                used = state.usage.total if state.usage is not None else None
                # Cancelled (or crashed): shield the release so the slot returns. Otherwise no scope: it costs.
                with anyio.CancelScope(shield=True) if outcome is Outcome.CANCELLED else nullcontext():
                    await pool.release(lease, outcome, tokens_used=used, retry_after=retry_after, error=error)
        raise _final_error(failures)


def _final_error(failures: list[UpstreamError]) -> UpstreamError:
    """The last failure stands for all (ErrorsMiddleware tells what was tried, from the attempts); a 429 carries
    the soonest Retry-After seen."""
    last = failures[-1]
    if last.status == 429:
        hints = [f.retry_after for f in failures if f.retry_after is not None]
        last.retry_after = min(hints) if hints else 1.0
    return last
