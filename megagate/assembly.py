"""The assembly of megagate: its routes and its middleware stack, as pure functions of the configuration and the
resources the lifecycle owns (transport, pools, metrics, client directory). `app.Gateway` calls them at start-up
and again on each hot reload.

Request path (outermost first)::

    [TracingMiddleware] -> MetricsMiddleware -> AccessLogMiddleware -> ErrorsMiddleware -> AuthMiddleware
        -> DefaultsMiddleware -> ClientLimitsMiddleware -> FallbackMiddleware -> [HedgingMiddleware]
        -> RotationMiddleware -> Router --/v1/chat/completions, /v1/messages, /v1/responses, /v1/embeddings-->
           UpstreamProxy
                  |--/v1/messages/count_tokens--> CountTokensApp (-> UpstreamProxy, or a local estimate)
                  \\--/v1/models, /healthz, /readyz, /metrics, /admin...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.routing import Route, Router

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send, send_error, send_json
from megagate.config import Config
from megagate.core.budget import Line
from megagate.core.errors import InvalidRequest, NotFound
from megagate.core.pricing import PriceTable, UpstreamPrices
from megagate.endpoints.count_tokens import CountTokensApp
from megagate.endpoints.models import ModelsApp
from megagate.endpoints.proxy import UpstreamProxy
from megagate.middleware.access_log import AccessLogMiddleware
from megagate.middleware.auth import AuthMiddleware, ClientDirectory
from megagate.middleware.budgets import Alerts, BudgetMiddleware, Budgets
from megagate.middleware.client_limits import ClientLimitsMiddleware, SharedWindows
from megagate.middleware.defaults import DefaultsMiddleware
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.fallback import FallbackMiddleware
from megagate.middleware.hedging import HedgingMiddleware
from megagate.middleware.ledger import LedgerMiddleware, Recorder
from megagate.middleware.metrics import MetricsMiddleware
from megagate.middleware.rotation import RotationMiddleware
from megagate.ops.admin import AdminGuard, KeysApp
from megagate.ops.prometheus import Metrics, MetricsApp
from megagate.ops.reload import Reloadable, ReloadApp
from megagate.ops.status_page import StatusPage
from megagate.ops.usage_page import UsagePage
from megagate.ops.usage_report import UsageApp
from megagate.pool import KeyPool
from megagate.routing import ENDPOINTS, Routes
from megagate.state import route_of
from megagate.upstream import Transport
from megagate.upstream.fast_transport import FastTransport


@dataclass(slots=True)
class Resources:
    """What the lifecycle owns and the assembly uses: built once (transport, metrics) or per configuration."""

    transport: Transport
    metrics: Metrics
    pools: dict[str, KeyPool]
    directory: ClientDirectory
    clock: Clock
    reloadable: Reloadable | None = None  # what POST /admin/reload reloads (None: the route answers 400)
    client_windows: SharedWindows | None = None  # per-client windows in the shared store (None: in process)
    tracer: Any = None  # an OpenTelemetry tracer, when [tracing] is configured
    ledger: Recorder | None = None  # the usage ledger's writer ([usage] store = "off": None)
    budgets: Budgets | None = None  # where budget spend and reservations live (this process, or Redis)
    alerts: Alerts | None = None  # where budget threshold crossings go ([alerts] webhook)
    upstream_prices: UpstreamPrices | None = None  # what the upstreams' model lists say models cost


def assemble(config: Config, resources: Resources) -> ASGIApp:
    """The routes wrapped in the middleware stack: `for cls, kwargs in reversed(stack): app = cls(app, **kwargs)`."""
    app: ASGIApp = build_router(config, resources)
    for cls, kwargs in reversed(build_stack(config, resources)):
        app = cls(app, **kwargs)
    return app


def build_transport(config: Config) -> Transport:
    timeouts = config.timeouts
    max_connections = max(u.connection_cap for u in config.upstreams)
    if config.transport == "httpcore":
        from megagate.upstream.httpcore_transport import HttpcoreTransport

        return HttpcoreTransport(timeouts=timeouts, max_connections=max_connections)
    return FastTransport(timeouts=timeouts, max_connections=max_connections)


class AllowMethods:
    """`endpoint` for `methods`; other methods get a 405 in the route's envelope (Starlette's is plain text).

    A class, not a closure: Starlette's Route treats a plain function as a request/response endpoint."""

    def __init__(self, methods: tuple[str, ...], endpoint: ASGIApp) -> None:
        self.methods = methods
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in self.methods:
            error = InvalidRequest(f"Method {scope['method']} is not allowed here.", status=405)
            await send_error(send, error, route_of(scope).format)
            return
        await self.endpoint(scope, receive, send)


async def health(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, b'{"status":"ok"}')


class Readiness:
    """`/readyz`: 503 while no upstream key can be used (all disabled or cooling), so a balancer routes elsewhere."""

    def __init__(self, pools: dict[str, KeyPool]) -> None:
        self.pools = pools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.pools or any(pool.usable() for pool in self.pools.values()):
            await send_json(send, 200, b'{"status":"ready"}')
        else:
            await send_json(send, 503, b'{"status":"no usable upstream key"}')


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send_error(send, NotFound(f"Unknown route {scope['path']}."), route_of(scope).format)


def build_router(config: Config, res: Resources) -> Router:
    """The routes: each client endpoint (`routing.ENDPOINTS`) to the app serving its operation, then the model list
    and the operator routes."""
    proxy = UpstreamProxy(config=config, transport=res.transport, upstream_prices=res.upstream_prices)
    count_tokens = CountTokensApp(proxy)
    serving: dict[str, ASGIApp] = {"chat": proxy, "embeddings": proxy, "count_tokens": count_tokens}
    models = ModelsApp(config=config, transport=res.transport, pools=res.pools, clock=res.clock,
                       prices=res.upstream_prices)  # fmt: skip
    if res.upstream_prices is not None:
        res.upstream_prices.refresh = models.models  # the lifecycle refreshes the lists (and so the prices)
    routes = [Route(path, AllowMethods(("POST",), serving[e.operation])) for path, e in ENDPOINTS.items()]
    routes += [
        Route("/v1/models", AllowMethods(("GET",), models)),
        Route("/v1/models/{model:path}", AllowMethods(("GET",), models)),
        Route("/healthz", AllowMethods(("GET", "HEAD"), health)),
        Route("/readyz", AllowMethods(("GET", "HEAD"), Readiness(res.pools))),
    ]
    metrics_app: ASGIApp = MetricsApp(res.metrics, res.pools)
    if config.admin_token:
        metrics_app = AdminGuard(metrics_app, config.admin_token)
        keys = AdminGuard(KeysApp(res.pools), config.admin_token)
        routes.append(Route("/admin/keys", AllowMethods(("GET",), keys)))
        usage = AdminGuard(UsageApp(config), config.admin_token)
        routes.append(Route("/admin/usage", AllowMethods(("GET",), usage)))
        if res.reloadable is not None:
            reload = AdminGuard(ReloadApp(res.reloadable), config.admin_token)
            routes.append(Route("/admin/reload", AllowMethods(("POST",), reload)))
        page = StatusPage(config=config, pools=res.pools, metrics=res.metrics, clients=res.directory)
        routes.append(Route("/admin", AllowMethods(("GET",), page)))
        routes.append(Route("/admin/spending", AllowMethods(("GET",), UsagePage(config))))
        routes.append(Route("/admin/login", AllowMethods(("POST",), page)))
    routes.append(Route("/metrics", AllowMethods(("GET",), metrics_app)))
    everything = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return Router(routes=routes, default=AllowMethods(everything, not_found))


def _budget_remaining(metrics: Metrics) -> Callable[[Line, float], None]:
    def observe(line: Line, spent: float) -> None:
        metrics.budget_remaining(line.scope, line.period).set(max(0.0, line.limit - spent))

    return observe


def build_stack(config: Config, res: Resources) -> list[tuple[Any, dict[str, Any]]]:
    """The middlewares, outermost first. Metrics and the access log outermost (they see the final status and every
    attempt), then the error renderer, authentication before any body is read, defaults (the body read once, the
    request state made), the client's own limits, then fallback outside hedging outside rotation: a failed model is
    retried on another key first, raced if configured, and only then replaced by the next model."""
    clock = res.clock
    defaults = {
        "default_model": config.default_model,
        "defaults": config.defaults,
        "aliases": config.aliases,
        "max_body_bytes": config.max_body_bytes,
        "body_timeout": config.body_timeout,
    }
    hedging = config.hedging
    rotation = {"pools": res.pools, "route": Routes(config), "rotation": config.rotation, "clock": clock}
    client_limits = {"clock": clock, "default_max_tokens": config.rotation.default_max_tokens,
                     "shared": res.client_windows}  # fmt: skip
    budgets: dict[str, Any] = {}
    if res.budgets is not None and (config.budgets or any(c.budget for c in config.clients)):
        budgets = {"budgets": res.budgets, "prices": PriceTable(config.prices, res.upstream_prices),
                   "model_budgets": config.budgets,
                   "default_max_tokens": config.rotation.default_max_tokens, "alerts": res.alerts,
                   "thresholds": config.alerts.thresholds, "on_spent": _budget_remaining(res.metrics)}  # fmt: skip
    tracing: list[tuple[Any, dict[str, Any]]] = []
    if res.tracer is not None:  # an optional dependency, imported only when configured
        from megagate.middleware.tracing import TracingMiddleware

        tracing.append((TracingMiddleware, {"tracer": res.tracer, "clock": clock}))
    return [
        *tracing,
        (MetricsMiddleware, {"metrics": res.metrics, "clock": clock}),
        (AccessLogMiddleware, {"clock": clock, "text": config.log_format == "text", "log": config.access_log}),
        *([(LedgerMiddleware, {"ledger": res.ledger, "clock": clock})] if res.ledger is not None else []),
        (ErrorsMiddleware, {"debug": config.debug}),
        (AuthMiddleware, {"clients": config.clients, "directory": res.directory}),
        (DefaultsMiddleware, defaults),
        (ClientLimitsMiddleware, client_limits),
        *([(BudgetMiddleware, budgets)] if budgets else []),
        (FallbackMiddleware, {"chains": config.fallbacks, "timeout": config.timeouts.total}),
        *([(HedgingMiddleware, {"delay": hedging.delay, "models": hedging.models})] if hedging else []),
        (RotationMiddleware, rotation),
    ]
