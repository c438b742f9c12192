"""megagate's Prometheus metrics (prometheus-client): what is counted, with bounded labels, and the /metrics route.

Each Gateway owns its own registry, so two gateways in one process (tests, an app mounting two) never collide.
Labels never carry a secret: keys appear as their public ids, clients by their configured names. Model names come
from clients, so only the first `model_cap` distinct ones get their own label; the rest count as "other".

Several hypercorn workers: each worker serves its own figures at /metrics. Either scrape each worker (one port
per worker), or run with PROMETHEUS_MULTIPROC_DIR set to an empty directory: /metrics then aggregates every
worker's files through prometheus-client's multiprocess collector (gauges sum; key states are per worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from megagate.asgi import Receive, Scope, Send, send_json
from megagate.pool import KeyPool
from megagate.routing import ENDPOINTS
from megagate.state import get_state

# LLM latencies: 10 ms (a cached or tiny answer) to 120 s (a long completion).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
KNOWN_ROUTES = frozenset({*ENDPOINTS, "/v1/models", "/healthz", "/readyz", "/metrics"})
KEY_STATES = ("active", "cooling", "disabled")


class Children:
    """A labelled metric's children, cached: `labels()` validates and locks on every call, a dict lookup does not
    (label values are bounded, so the cache is too)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*labels)
        return child


class Metrics:
    def __init__(
        self, *, model_cap: int = 100, registry: CollectorRegistry | None = None, multiprocess: bool = False
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess
        self.model_cap = model_cap
        self._models: set[str] = set()
        r = self.registry
        self.requests = Children(
            Counter("megagate_requests", "Requests answered", ["route", "model", "client", "status"], registry=r)
        )
        self.duration = Children(Histogram(
            "megagate_request_duration_seconds", "Time to the end of the answer", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        self.ttft = Children(Histogram(
            "megagate_time_to_first_token_seconds", "Time to the first byte of the answer's body", ["route", "model"],
            buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        self.tokens = Children(Counter("megagate_tokens", "Tokens used", ["model", "client", "kind"], registry=r))
        self.cost = Children(Counter("megagate_cost_usd", "USD spent, by [prices]", ["model", "client"], registry=r))
        self.alerts = Children(Counter("megagate_budget_alerts", "Budget alerts by result", ["result"], registry=r))
        self.ledger_dropped = Counter(
            "megagate_ledger_dropped_rows", "Usage rows dropped because the ledger's queue was full", registry=r
        )
        self.unpriced = Children(Counter(
            "megagate_unpriced_requests", "Answers whose model has no price (their cost is unknown, not 0)", ["model"],
            registry=r,
        ))  # fmt: skip
        self.attempts = Children(Counter(
            "megagate_upstream_attempts", "Upstream attempts by outcome", ["upstream", "key_id", "outcome"], registry=r
        ))  # fmt: skip
        self.fallbacks = Children(
            Counter("megagate_fallbacks", "Model fallbacks", ["from_model", "to_model"], registry=r)
        )
        self.local_answers = Children(Counter(
            "megagate_local_answers", "Answers megagate gave itself (a local token-count estimate)",
            ["route", "reason"],
            registry=r,
        ))  # fmt: skip
        self.reloads = Children(
            Counter("megagate_config_reloads", "Configuration reloads by result", ["result"], registry=r)
        )
        self.stream_failures = Children(Counter(
            "megagate_stream_failures", "Streams that failed after they started (ended by megagate's error event)",
            ["route"], registry=r,
        ))  # fmt: skip
        # What is in flight, read at scrape time (so a stream still waiting for its first event counts, and the
        # scrape itself does not): MetricsMiddleware keeps the live scopes here.
        self.live: dict[int, Any] = {}
        in_flight = Gauge("megagate_in_flight", "Requests and streams in progress", ["kind"], registry=r)
        self.requests_in_flight, self.streams_in_flight = in_flight.labels("request"), in_flight.labels("stream")
        self.key_state = Children(Gauge(
            "megagate_key_state", "1 for each upstream key's current state", ["upstream", "key_id", "state"], registry=r
        ))  # fmt: skip
        self.budget_remaining = Children(Gauge(
            "megagate_budget_remaining_usd", "What a budget has left in its current period, as of its last request",
            ["budget", "period"], registry=r, multiprocess_mode="mostrecent",
        ))  # fmt: skip

    def model_label(self, model: str | None) -> str:
        if not model:
            return "none"
        if model in self._models:
            return model
        if len(self._models) < self.model_cap:
            self._models.add(model)
            return model
        return "other"

    @staticmethod
    def route_label(path: str) -> str:
        if path in KNOWN_ROUTES:
            return path
        return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

    def refresh_in_flight(self) -> None:
        states = [get_state(scope) for scope in self.live.values()]
        self.requests_in_flight.set(len(states))
        self.streams_in_flight.set(sum(1 for s in states if s is not None and s.request.stream))

    async def refresh_key_states(self, pools: Mapping[str, KeyPool]) -> None:
        for pool in pools.values():
            for report in await pool.report():
                for state in KEY_STATES:
                    self.key_state(report.upstream, report.id, state).set(1 if report.state == state else 0)

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsApp:
    def __init__(self, metrics: Metrics, pools: Mapping[str, KeyPool]) -> None:
        self.metrics = metrics
        self.pools = pools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.metrics.refresh_key_states(self.pools)
        self.metrics.refresh_in_flight()
        body = self.metrics.render()
        await send_json(send, 200, body, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")])
