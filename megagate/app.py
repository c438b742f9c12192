r"""Assembles megagate: the routes, the middleware stack, and `app`, the lazily configured ASGI app for hypercorn.

Request path (outermost first)::

    MetricsMiddleware -> AccessLogMiddleware -> ErrorsMiddleware -> AuthMiddleware -> DefaultsMiddleware
        -> ClientLimitsMiddleware -> FallbackMiddleware -> [HedgingMiddleware] -> RotationMiddleware
        -> Router --/v1/chat/completions, /v1/messages--> UpstreamProxy
                  |--/v1/messages/count_tokens--> CountTokensEndpoint (-> UpstreamProxy, or a local estimate)
                  \--/v1/models, /healthz, /readyz, /metrics, /admin/keys
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.routing import Route, Router

from megagate.admin import AdminGuard, KeysEndpoint
from megagate.asgi import ASGIApp, Receive, Scope, Send, send_error, send_json
from megagate.config import Config, config_file, load_config, prometheus_multiprocess
from megagate.core.errors import ConfigError, InvalidRequest, NotFound
from megagate.count_tokens import CountTokensEndpoint
from megagate.middleware.access_log import AccessLogMiddleware
from megagate.middleware.auth import AuthMiddleware, ClientDirectory
from megagate.middleware.client_limits import ClientLimitsMiddleware
from megagate.middleware.defaults import DefaultsMiddleware
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.fallback import FallbackMiddleware
from megagate.middleware.hedging import HedgingMiddleware
from megagate.middleware.metrics import MetricsMiddleware
from megagate.middleware.rotation import RotationMiddleware
from megagate.models import ModelsEndpoint
from megagate.pool import KeyPool, LocalKeyPool
from megagate.prometheus import Metrics, MetricsEndpoint
from megagate.proxy import UpstreamProxy
from megagate.reload import ReloadEndpoint, changes, restart_needed
from megagate.routing import ENDPOINTS, Routes
from megagate.state import route_format
from megagate.status_page import StatusPage
from megagate.upstream import Transport
from megagate.upstream.fast_transport import FastTransport

logger = logging.getLogger("megagate")
Clock = Callable[[], float]
WATCH_EVERY = 1.0  # seconds between looks at the configuration file, with `watch = true`


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
            await send_error(send, error, route_format(scope))
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


def _log_to_stderr(name: str) -> None:
    """Give a megagate logger a plain stderr handler unless the host application configured one."""
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send_error(send, NotFound(f"Unknown route {scope['path']}."), route_format(scope))


class Gateway:
    """megagate as one ASGI app. Owns the upstream transport and closes it at lifespan shutdown."""

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        clock: Clock = time.monotonic,
        loader: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.loader = loader  # where a reload reads the configuration again (None: it cannot)
        self.clock = clock
        self.transport = transport or build_transport(config)
        self.redis: Any = None  # the shared store's client (`megagate.resp`), entered by `running()`
        self.client_windows: Any = None  # per-client windows in the shared store (None: in this process)
        self.metrics = Metrics(model_cap=config.metrics_model_cap, multiprocess=prometheus_multiprocess())
        if config.access_log:
            _log_to_stderr("megagate.access")
        _log_to_stderr("megagate")  # reloads, pool warnings: an operator's lines, unless the host app logs them
        self.tracing = _tracing(config)  # (provider, tracer) when [tracing] is configured
        self.pools = self._pools(clock)
        self.app = self._assemble()

    def _assemble(self) -> ASGIApp:
        self.directory = ClientDirectory(self.config.clients, previous=getattr(self, "directory", None))
        app: ASGIApp = self._router(self.clock)
        for cls, kwargs in reversed(self._stack(self.clock)):
            app = cls(app, **kwargs)
        return app

    async def reload(self) -> tuple[bool, str]:
        """Load the configuration again and swap it in between requests (see `megagate.reload`); (ok, what
        changed or the one-line reason nothing did)."""
        if self.loader is None:
            return False, "this gateway was built from a configuration object: there is no file to reload"
        try:
            config = self.loader()
        except ConfigError as exc:
            return self._refused(str(exc))
        if (field := restart_needed(self.config, config)) is not None:
            return self._refused(f"{field}: changing it needs a restart")
        said = changes(self.config, config)
        previous = self.pools
        self.config = config
        self.pools = self._pools(self.clock)
        for name, pool in self.pools.items():
            old = previous.get(name)
            if old is not None and type(old) is type(pool):
                pool.adopt(old)  # type: ignore[attr-defined]
        self.app = self._assemble()
        self.metrics.reloads("ok").inc()
        logger.info("megagate: configuration reloaded: %s", "; ".join(said) or "no change")
        return True, "; ".join(said) or "no change"

    def _refused(self, reason: str) -> tuple[bool, str]:
        self.metrics.reloads("invalid").inc()
        logger.error("megagate: reload refused, the configuration is unchanged: %s", reason)
        return False, reason

    def _router(self, clock: Clock) -> Router:
        """The routes: each client endpoint (`routing.ENDPOINTS`) to the app serving its operation, then the
        model list and the operator routes."""
        config = self.config
        proxy = UpstreamProxy(config=config, transport=self.transport)
        count_tokens = CountTokensEndpoint(proxy, config=config)
        serving: dict[str, ASGIApp] = {"chat": proxy, "embeddings": proxy, "count_tokens": count_tokens}
        models = ModelsEndpoint(config=config, transport=self.transport, pools=self.pools, clock=clock)
        routes = [Route(path, AllowMethods(("POST",), serving[e.operation])) for path, e in ENDPOINTS.items()]
        routes += [
            Route("/v1/models", AllowMethods(("GET",), models)),
            Route("/v1/models/{model:path}", AllowMethods(("GET",), models)),
            Route("/healthz", AllowMethods(("GET", "HEAD"), health)),
            Route("/readyz", AllowMethods(("GET", "HEAD"), Readiness(self.pools))),
        ]
        metrics_endpoint: ASGIApp = MetricsEndpoint(self.metrics, self.pools)
        if config.admin_token:
            metrics_endpoint = AdminGuard(metrics_endpoint, config.admin_token)
            keys = AdminGuard(KeysEndpoint(self.pools), config.admin_token)
            routes.append(Route("/admin/keys", AllowMethods(("GET",), keys)))
            reload = AdminGuard(ReloadEndpoint(self), config.admin_token)
            routes.append(Route("/admin/reload", AllowMethods(("POST",), reload)))
            page = StatusPage(config=config, pools=self.pools, metrics=self.metrics, clients=self.directory)
            routes.append(Route("/admin", AllowMethods(("GET",), page)))
            routes.append(Route("/admin/login", AllowMethods(("POST",), page)))
        routes.append(Route("/metrics", AllowMethods(("GET",), metrics_endpoint)))
        everything = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        return Router(routes=routes, default=AllowMethods(everything, not_found))

    def _stack(self, clock: Clock) -> list[tuple[Any, dict[str, Any]]]:
        """The middlewares, outermost first (see the module docstring for why each sits where it does)."""
        config = self.config
        defaults = {
            "default_model": config.default_model,
            "defaults": config.defaults,
            "aliases": config.aliases,
            "max_body_bytes": config.max_body_bytes,
            "body_timeout": config.body_timeout,
        }
        hedging = config.hedging
        rotation = {"pools": self.pools, "route": Routes(config), "rotation": config.rotation, "clock": clock}
        client_limits = {"clock": clock, "default_max_tokens": config.rotation.default_max_tokens,
                         "shared": self.client_windows}  # fmt: skip
        tracing: list[tuple[Any, dict[str, Any]]] = []
        if self.tracing is not None:  # an optional dependency, imported only when configured
            from megagate.middleware.tracing import TracingMiddleware

            tracing.append((TracingMiddleware, {"tracer": self.tracing[1], "clock": clock}))
        return [
            *tracing,
            (MetricsMiddleware, {"metrics": self.metrics, "clock": clock}),
            (AccessLogMiddleware, {"clock": clock, "text": config.log_format == "text", "log": config.access_log}),
            (ErrorsMiddleware, {"debug": config.debug}),
            (AuthMiddleware, {"clients": config.clients, "directory": self.directory}),
            (DefaultsMiddleware, defaults),
            (ClientLimitsMiddleware, client_limits),
            (FallbackMiddleware, {"chains": config.fallbacks, "deadline": config.timeouts.total}),
            *([(HedgingMiddleware, {"delay": hedging.delay, "models": hedging.models})] if hedging else []),
            (RotationMiddleware, rotation),
        ]

    def _pools(self, clock: Clock) -> dict[str, KeyPool]:
        """One KeyPool per upstream with keys: in this process, or shared through Redis (`[pool] store`)."""
        config, settings = self.config, self.config.pool
        upstreams = [u for u in config.upstreams if u.keys]
        if settings.store == "memory":
            return {u.name: LocalKeyPool(u.name, u.key_configs, config.rotation, clock=clock) for u in upstreams}
        from megagate.redis_pool import RedisClientWindows, RedisKeyPool
        from megagate.resp import RedisClient

        timeout = min(config.timeouts.pool, 2.0)
        assert settings.redis_url is not None  # config validation requires it with store = "redis"
        if self.redis is None:  # opened once; a reload keeps it (a different store needs a restart)
            self.redis = RedisClient.from_url(settings.redis_url, timeout=timeout)
        self.client_windows = RedisClientWindows(self.redis, prefix=settings.prefix)
        return {
            u.name: RedisKeyPool(u.name, u.key_configs, config.rotation, client=self.redis, prefix=settings.prefix,
                                 lease_ttl=settings.lease_ttl, on_redis_error=settings.on_redis_error,
                                 workers=settings.workers, clock=clock)
            for u in upstreams
        }  # fmt: skip

    @asynccontextmanager
    async def running(self, *, reload_on_sighup: bool = False) -> AsyncIterator[Gateway]:
        """The gateway's resources for as long as it serves: the Redis client, the pools' lease renewal and (its
        own lifespan asks for it) a reload on SIGHUP. An app that mounts the gateway enters it in its lifespan."""
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.aclose)
            if self.redis is not None:
                await stack.enter_async_context(self.redis)
            group = await stack.enter_async_context(anyio.create_task_group())
            if self.redis is not None:
                group.start_soon(self._maintain_pools)
            if reload_on_sighup and hasattr(signal, "SIGHUP"):
                group.start_soon(self._reload_on_sighup)
            if self.loader is not None and (path := config_file()) is not None:
                group.start_soon(self._reload_on_change, path)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()

    async def _maintain_pools(self) -> None:
        while True:  # the current pools, whichever reload made them: they share the leases to renew
            await anyio.sleep(self.config.pool.lease_ttl / 3)
            for pool in list(self.pools.values()):
                await pool.maintain()  # type: ignore[attr-defined]

    async def _reload_on_change(self, path: Path) -> None:
        """`watch = true`: look at the file every WATCH_EVERY seconds and reload when its mtime or size changes (a
        poll, not inotify: it works on every filesystem and costs one stat a second). Off again after a reload
        that sets `watch = false`."""
        seen = _stamp(path)
        while True:
            await anyio.sleep(WATCH_EVERY)
            stamp = _stamp(path)
            if stamp != seen and self.config.watch:
                await self.reload()
            seen = stamp

    async def _reload_on_sighup(self) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await self.reload()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, lambda: self)
            return
        await self.app(scope, receive, send)

    async def aclose(self) -> None:
        await self.transport.aclose()
        if self.tracing is not None:
            self.tracing[0].shutdown()


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:  # being replaced, or gone: a change once it is back
        return None
    return stat.st_mtime, stat.st_size


def _tracing(config: Config) -> tuple[Any, Any] | None:
    """A tracer provider of megagate's own (the host application's global one is left alone) and its tracer."""
    if config.tracing is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        raise ConfigError("tracing: needs opentelemetry-sdk (pip install 'megagate[tracing]')") from None
    provider = TracerProvider(resource=Resource.create({"service.name": config.tracing.service_name}))
    if config.tracing.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))  # stdout as it is now
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError("tracing.exporter: otlp needs opentelemetry-exporter-otlp-proto-http") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.tracing.endpoint)))
    return provider, provider.get_tracer("megagate")


def create_app(
    config: Config | None = None, *, transport: Transport | None = None, clock: Clock = time.monotonic
) -> Gateway:
    """The megagate ASGI app for `config` (default: `load_config()` from the environment, which a reload reads
    again)."""
    if config is not None:
        return Gateway(config, transport=transport, clock=clock)
    return Gateway(load_config(), transport=transport, clock=clock, loader=load_config)


async def _lifespan(receive: Receive, send: Send, build: Callable[[], Gateway]) -> None:
    """ASGI lifespan: build (a bad configuration fails start-up with one line), serve inside `running()`, shut down."""
    message = await receive()
    if message["type"] != "lifespan.startup":
        return
    try:
        gateway = build()
    except ConfigError as exc:
        logger.error("megagate: bad configuration: %s", exc)
        await send({"type": "lifespan.startup.failed", "message": f"megagate: bad configuration: {exc}"})
        return
    async with gateway.running(reload_on_sighup=True):
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
    await send({"type": "lifespan.shutdown.complete"})


class LazyGateway:
    """`megagate.app:app`: reads its configuration at lifespan start-up (or first request), not at import."""

    def __init__(self) -> None:
        self._gateway: Gateway | None = None

    def _build(self) -> Gateway:
        if self._gateway is None:
            self._gateway = create_app()
        return self._gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self._build)
            return
        await self._build()(scope, receive, send)


app = LazyGateway()
