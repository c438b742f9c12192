"""FallbackMiddleware: when a model fails, try the next one in its chain, all within one request deadline.

It sits outside RotationMiddleware: rotation has already tried the model's keys when an error arrives here. The
chain is the request's `fallback_models` if it sent one, else the configured `[fallbacks]` chain of its model.
Rate limits fall back unless the request says `fallback_on_rate_limit: false`; 5xx, timeouts, refused keys and
connection failures unless `fallback_on_error: false`; any other 4xx is the request's own fault and never does.
Nothing falls back once the client has seen a byte. Every response says which model served and how many upstream
attempts it took (`x-megagate-model`, `x-megagate-attempts`), streams too, before their first event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from megagate.asgi import ASGIApp, Headers, Receive, Scope, Send, header, observe_response, replay_body
from megagate.cancel import Deadline
from megagate.core.errors import (
    MegagateError,
    NoKeyAvailable,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from megagate.core.outcome import classify, fallback_switch
from megagate.state import RequestState, get_state

logger = logging.getLogger("megagate.fallback")
TIMEOUT_HEADER = b"x-megagate-timeout"  # a client may shorten (never lengthen) its request's deadline, in seconds


def _chain(model: str, requested: Sequence[str] | None, configured: Mapping[str, Sequence[str]]) -> list[str]:
    candidates = [model, *(requested if requested is not None else configured.get(model, ()))]
    return list(dict.fromkeys(candidates))  # each model once, in order


class FallbackMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        chains: Mapping[str, Sequence[str]] | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.app = app
        self.chains = dict(chains or {})
        self.timeout = timeout  # seconds for the whole request, every attempt together

    def _timeout(self, scope: Scope) -> float:
        """The configured timeout, or the client's shorter one (never longer)."""
        value = header(scope, TIMEOUT_HEADER)
        try:
            asked = float(value) if value else self.timeout
        except ValueError:
            asked = self.timeout
        return min(self.timeout, asked) if asked > 0 else self.timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope) if scope["type"] == "http" else None
        if state is None:
            await self.app(scope, receive, send)
            return

        def report(headers: Headers) -> Headers:
            attempts = str(len(state.attempts)).encode()
            return [*headers, (b"x-megagate-model", state.served_model.encode()), (b"x-megagate-attempts", attempts)]

        observer, send = observe_response(scope, send)
        timeout = self._timeout(scope)
        with Deadline(timeout), observer.adding_headers(report):
            await self._try_chain(scope, receive, send, state)
            return
        # The deadline passed. Before the first byte that is a 504; after it, the answer ends it visibly.
        error = UpstreamTimeout(f"no complete answer within the request deadline of {timeout:g} s")
        if state.answer is None or not state.answer.started:
            raise error
        await state.answer.end(error)

    async def _try_chain(self, scope: Scope, receive: Receive, send: Send, state: RequestState) -> None:
        request = state.request
        candidates = _chain(request.model, request.fallback_models, self.chains)
        last: MegagateError | None = None
        for index, model in enumerate(candidates):
            if index:
                logger.info("falling back from %s to %s", request.model, model)
                state.fallbacks.append((request.model, model))
                request.set_model(model)
            try:
                await self.app(scope, replay_body(request.encode(), receive), send)
                return
            except NotFound:
                if index == 0 or state.response_started:
                    raise
                continue  # a fallback model no upstream serves: skip it
            except (UpstreamError, NoKeyAvailable) as error:
                reason = fallback_switch(classify(error))
                allowed = (reason == "rate_limit" and request.fallback_on_rate_limit) or (
                    reason == "error" and request.fallback_on_error
                )
                last = error
                if state.response_started or not allowed:
                    raise error from None
        assert last is not None  # the chain is never empty, and every way out of the loop but this returns
        raise last
