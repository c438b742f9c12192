"""MetricsMiddleware: observe every request once, at its end, into `megagate.prometheus.Metrics`.

It sits outermost (outside ErrorsMiddleware), so it sees the status the client got, also for errors. Per request
it counts the route, model, client and status class; times the whole answer and its first body byte; adds tokens,
upstream attempts by outcome and fallbacks from the request state; and tracks requests and streams in flight.
"""

from __future__ import annotations

import time

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send, observe_response
from megagate.ops.prometheus import Metrics
from megagate.state import get_client, get_state, route_of

OPERATOR_ROUTES = frozenset({"/metrics", "/healthz", "/readyz", "/admin/keys"})


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, clock: Clock = time.monotonic) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started = self.clock()
        observer, send = observe_response(scope, send, self.clock)
        counted = route_of(scope).path not in OPERATOR_ROUTES  # a scrape or a health check is no request in flight
        if counted:
            metrics.live[id(scope)] = scope
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                del metrics.live[id(scope)]
            self._record(scope, observer.status, started, observer.first_byte)

    def _record(self, scope: Scope, status: int, started: float, first_byte: float | None) -> None:
        metrics = self.metrics
        route = metrics.route_label(route_of(scope).path)
        state = get_state(scope)
        known = get_client(scope)
        client = known.name if known is not None else "anonymous"
        # requests count under the model asked for; tokens under the model that served (after any fallback)
        requested = state.requested_model if state else None
        model = metrics.model_label(requested)
        metrics.requests(route, model, client, f"{status // 100}xx" if status else "none").inc()
        metrics.duration(route).observe(self.clock() - started)
        if first_byte is not None and state is not None:
            metrics.ttft(route, model).observe(first_byte - started)
        if state is None:
            return
        if state.usage is not None:
            served = metrics.model_label(state.request.model)
            usage = state.usage
            metrics.tokens(served, client, "prompt").inc(usage.prompt)  # cache reads and writes included
            metrics.tokens(served, client, "completion").inc(usage.output)
            for kind, count in (("cache_read", usage.cache_read), ("cache_write", usage.cache_write),
                                ("reasoning", usage.reasoning)):  # fmt: skip
                if count:
                    metrics.tokens(served, client, kind).inc(count)
            if (cost := state.cost) is not None:
                metrics.cost(served, client).inc(cost)
            else:
                metrics.unpriced(served).inc()
        for attempt in state.attempts:
            outcome = attempt.outcome_name
            metrics.attempts(attempt.upstream, attempt.key_id, outcome).inc()
        if state.stream_failure is not None:
            metrics.stream_failures(route).inc()
        if state.local_answer is not None:
            metrics.local_answers(route, state.local_answer).inc()
        for source, target in state.fallbacks:
            metrics.fallbacks(metrics.model_label(source), metrics.model_label(target)).inc()
