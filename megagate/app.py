"""megagate's lifecycle: `Gateway` owns the transport, the pools, the Redis client, tracing and the reloads
(SIGHUP, `POST /admin/reload`, `watch = true`) and serves what `assembly.assemble` built from the configuration;
`app` is the lazily configured ASGI app for hypercorn (`megagate.app:app`), `create_app` the one to embed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send
from megagate.assembly import Resources, assemble, build_transport
from megagate.config import Config, config_file, load_config, prometheus_multiprocess
from megagate.core.budget import seed_from_rows
from megagate.core.errors import ConfigError, MegagateError, RedisError
from megagate.core.pricing import UpstreamPrices
from megagate.ledger import Store
from megagate.ledger.sqlite import SQLiteStore
from megagate.ledger.writer import LedgerWriter
from megagate.middleware.auth import ClientDirectory
from megagate.ops.alerts import AlertSender
from megagate.ops.prometheus import Metrics
from megagate.ops.reload import changes, restart_needed
from megagate.ops.usage_report import report_store
from megagate.parent_watch import finish_on_sigterm, hypercorn_shutdown_event, leave_with, serving_parent
from megagate.pool import KeyPool
from megagate.pool.budget_store import LocalBudgets, RedisBudgets
from megagate.pool.local import LocalKeyPool
from megagate.upstream import Transport
from megagate.upstream.fast_transport import FastTransport

logger = logging.getLogger("megagate")
WATCH_EVERY = 1.0  # seconds between looks at the configuration file, with `watch = true`


def _log_to_stderr(name: str) -> None:
    """Give a megagate logger a plain stderr handler unless the host application configured one."""
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


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
        self.ledger = _ledger(config, self.metrics)  # started by running(); a reload keeps it
        self.budgets = self._budgets()  # the book of spend and reservations; a reload keeps it
        self.alerts = self._alerts()  # budget alerts, posted by a task of running()
        self.upstream_prices = UpstreamPrices()  # learnt from the model lists by `_learn_prices`; reloads keep it
        self.directory: ClientDirectory | None = None
        self.app = self._assemble()

    def _assemble(self) -> ASGIApp:
        """The routes and stack for the current configuration; a kept client keeps its window (by name)."""
        self.directory = ClientDirectory(self.config.clients, previous=self.directory)
        return assemble(self.config, self.resources())

    def resources(self) -> Resources:
        """What the assembly is built from: this gateway's transport, metrics, pools and client directory."""
        assert self.directory is not None  # made by _assemble before it asks
        tracer = self.tracing[1] if self.tracing is not None else None
        return Resources(self.transport, self.metrics, self.pools, self.directory, self.clock, self,
                         self.client_windows, tracer, self.ledger, self.budgets, self.alerts,
                         self.upstream_prices)  # fmt: skip

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

    def _pools(self, clock: Clock) -> dict[str, KeyPool]:
        """One KeyPool per upstream with keys: in this process, or shared through Redis (`[pool] store`)."""
        config, settings = self.config, self.config.pool
        upstreams = [u for u in config.upstreams if u.keys]
        if settings.store == "memory":
            return {u.name: LocalKeyPool(u.name, u.key_configs, config.rotation, clock=clock) for u in upstreams}
        from megagate.pool.client_windows import RedisClientWindows
        from megagate.pool.redis_store import RedisKeyPool
        from megagate.pool.resp import RedisClient

        timeout = min(config.timeouts.pool, 2.0)
        assert settings.redis_url is not None  # config validation requires it with store = "redis"
        if self.redis is None:  # opened once; a reload keeps it (a different store needs a restart)
            try:
                self.redis = RedisClient.from_url(settings.redis_url, timeout=timeout,
                                                  max_connections=settings.redis_max_connections)  # fmt: skip
            except ValueError as exc:  # a TLS file that cannot be read
                raise ConfigError(f"pool.redis_url: {exc}") from None
        self.client_windows = RedisClientWindows(self.redis, prefix=settings.prefix)
        return {
            u.name: RedisKeyPool(u.name, u.key_configs, config.rotation, client=self.redis, prefix=settings.prefix,
                                 lease_ttl=settings.lease_ttl, on_redis_error=settings.on_redis_error,
                                 workers=settings.workers, clock=clock)
            for u in upstreams
        }  # fmt: skip

    def _alerts(self) -> AlertSender | None:
        """The webhook's own connection (not the upstream transport: a webhook is not an upstream, and tests give
        the upstream a mock), closed with the gateway."""
        if not self.config.alerts.webhook:
            return None
        transport = FastTransport(timeouts=self.config.timeouts, max_connections=4)
        return AlertSender(transport, self.config.alerts.webhook, on_result=lambda r: self.metrics.alerts(r).inc())

    def _budgets(self) -> LocalBudgets | RedisBudgets:
        """Budget spend in this process (seeded from the ledger by `running()`), or shared through the pool's Redis."""
        if self.redis is None:
            return LocalBudgets()
        settings = self.config.pool
        return RedisBudgets(self.redis, prefix=settings.prefix, ttl=max(600.0, 2 * self.config.timeouts.total),
                            on_redis_error=settings.on_redis_error)  # fmt: skip

    async def _seed_budgets(self) -> None:
        """A restart keeps this month's spend: the in-process book starts from the ledger's rollups."""
        config = self.config
        client_budgets = {c.name: c.budget for c in config.clients if c.budget is not None}
        if not isinstance(self.budgets, LocalBudgets) or not (client_budgets or config.budgets):
            return
        store = report_store(config)
        if store is None:
            return
        now = time.time()
        month = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m")
        try:
            rows = await anyio.to_thread.run_sync(
                store.report, f"{month}-01", f"{month}-31", ["day", "client", "model"]
            )
        except Exception as exc:  # noqa: BLE001 -- the database's own error: budgets start from zero, said once
            logger.warning("megagate: budgets start from zero: the usage ledger could not be read (%s)", exc)
            return
        seed_from_rows(self.budgets.book, rows, client_budgets, list(config.budgets.items()), now)

    @asynccontextmanager
    async def running(self, *, own_process: bool = False) -> AsyncIterator[Gateway]:
        """The gateway's resources for as long as it serves: the Redis client, the pools' lease renewal and, when
        the process is megagate's own (its lifespan says so), a reload on SIGHUP and leaving with a dead parent
        (`megagate.parent_watch`). An app that mounts the gateway enters it in its lifespan."""
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.aclose)
            if self.redis is not None:
                await stack.enter_async_context(self.redis)
                await self._say_if_redis_is_unreachable()  # before serving: the line comes first (within the timeout)
            await self._seed_budgets()
            if self.ledger is not None:
                self.ledger.start()  # its thread writes; at the end what is queued is flushed (within 10 s)
            group = await stack.enter_async_context(anyio.create_task_group())
            if self.redis is not None:
                group.start_soon(self._maintain_pools)
            if self.alerts is not None:
                group.start_soon(self.alerts.run)
            if self.config.upstream_prices:
                group.start_soon(self._learn_prices)
            if own_process and hasattr(signal, "SIGHUP"):
                group.start_soon(self._reload_on_sighup)
            if own_process and (parent := serving_parent()) is not None:
                group.start_soon(leave_with, parent)
                if hypercorn_shutdown_event() is not None:  # a hypercorn worker: SIGTERM would kill it mid-flush
                    group.start_soon(finish_on_sigterm)
            if self.loader is not None and (path := config_file()) is not None:
                group.start_soon(self._reload_on_change, path)
            try:
                yield self
            finally:
                # The last rows written while the tasks still run: the SIGTERM that hypercorn's parent sends a
                # worker still finishing is handled by one of them (finish_on_sigterm), not fatal mid-flush.
                if self.ledger is not None:
                    await self._close_ledger()
                group.cancel_scope.cancel()

    async def _learn_prices(self) -> None:
        """Ask the upstreams' model lists now and every `models_cache_ttl` (at least a minute): the prices they
        give price the models `[prices]` does not name. A failed list is logged by the refresh; this goes on."""
        while True:
            refresh = self.upstream_prices.refresh
            if refresh is not None:
                with contextlib.suppress(MegagateError):  # said by the model list's refresh; the next round tries
                    await refresh()
            await anyio.sleep(max(60.0, self.config.models_cache_ttl))

    async def _close_ledger(self) -> None:
        assert self.ledger is not None
        with anyio.CancelScope(shield=True):  # the rows of the last requests are written however the end came
            await anyio.to_thread.run_sync(self.ledger.close)

    async def _maintain_pools(self) -> None:
        """Renew leases and refresh each pool's state every third of the lease TTL, for as long as the gateway
        runs: a failure is logged and the next round tries again (a dead loop would let long streams' leases
        lapse and freeze `usable`)."""
        while True:  # the current pools, whichever reload made them: they share the leases to renew
            await anyio.sleep(self.config.pool.lease_ttl / 3)
            for name, pool in list(self.pools.items()):
                try:
                    await pool.maintain()  # type: ignore[attr-defined]
                except Exception:
                    logger.exception("megagate: maintaining the key pool of %s failed; trying again", name)

    async def _say_if_redis_is_unreachable(self) -> None:
        """One line at start-up when the shared store cannot be reached (a wrong CA, a wrong password): requests
        meet `on_redis_error` until it answers, and the operator should know why at once."""
        try:
            await self.redis.execute("PING")
        except RedisError as exc:
            logger.warning(
                "megagate: the shared key pool's Redis does not answer yet: %s; requests get %s until it does",
                exc,
                "503" if self.config.pool.on_redis_error == "fail" else "local pools",
            )

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
        if self.alerts is not None:
            await self.alerts.aclose()
        if self.tracing is not None:
            self.tracing[0].shutdown()


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:  # being replaced, or gone: a change once it is back
        return None
    return stat.st_mtime, stat.st_size


def _ledger(config: Config, metrics: Metrics) -> LedgerWriter | None:
    """The usage ledger's writer for `[usage]` (None when it is off)."""
    settings = config.usage
    if settings.store == "off":
        return None
    store: Store
    if settings.store == "postgres":
        from megagate.ledger.postgres import PostgresStore

        assert settings.dsn is not None  # config validation requires it
        store = PostgresStore(settings.dsn)
    else:
        store = SQLiteStore(settings.path)
    return LedgerWriter(store, bound=settings.queue_size, retention_days=settings.retention_days,
                        on_drop=metrics.ledger_dropped.inc)  # fmt: skip


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
    async with gateway.running(own_process=True):
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
