"""megagate's configuration: frozen Structs and `load_config`, the only reader of the environment and config files.

Simple mode reads `MEGALLM_API_KEYS` (or `MEGALLM_API_KEY`), `MEGALLM_BASE_URL` and `MEGAGATE_DEFAULT_MODEL`. Full
mode reads the TOML file named by `MEGAGATE_CONFIG`; any string there may be written `env:NAME` to read a secret
from the environment. A bad config raises `ConfigError` with one line naming the field.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from megagate.core.budget import Budget
from megagate.core.errors import ConfigError
from megagate.core.pricing import Price
from megagate.core.redis_url import RedisURLError, parse_redis_url
from megagate.core.scheduler import KeyLimits
from megagate.core.secrets import key_id

MEGALLM_BASE_URL = "https://ai.megallm.io"
DEFAULT_MODEL = "openai-gpt-oss-120b"

# Connections per origin when the keys set no concurrency limit: thousands of long streams (coding agents hold
# theirs for minutes) must not queue behind a small pool; the process's file-descriptor limit is the real bound.
UNLIMITED_CONNECTIONS = 4096
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Timeouts(_Config, frozen=True):
    """Seconds. `read` bounds each wait for upstream bytes; `first_byte` the wait for the response to start."""

    connect: PositiveFloat = 10.0
    read: PositiveFloat = 300.0
    write: PositiveFloat = 30.0
    pool: PositiveFloat = 10.0
    first_byte: PositiveFloat = 120.0
    total: PositiveFloat = 600.0  # one request's deadline, across every key and fallback model it tries


class KeyConfig(_Config, frozen=True):
    """One upstream key with its limits; `tier` fills rpm/tpm/max_concurrency from MegaLLM's published tiers."""

    key: str
    tier: Literal["basic", "pro"] | None = None
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrency: PositiveInt | None = None
    weight: PositiveFloat = 1.0


class UpstreamConfig(_Config, frozen=True):
    name: str
    base_url: str
    keys: list[str | KeyConfig] = []
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    # what it speaks: one format, "both" (chat completions and messages, as MegaLLM), or a list of formats
    format: Literal["openai", "anthropic", "both"] | list[Literal["openai", "anthropic", "responses"]] = "openai"
    # connections to its origin at once; None: what the keys can run (see `connection_cap`)
    max_connections: PositiveInt | None = None

    @property
    def connection_cap(self) -> int:
        """The most requests this upstream's keys can have in flight: the sum of their concurrency limits (tier
        presets included), so that a request holding a key lease never waits for a connection; unlimited keys (or
        none) get UNLIMITED_CONNECTIONS. An explicit `max_connections` wins."""
        if self.max_connections is not None:
            return self.max_connections
        limits = [KeyLimits.for_tier(k.tier, max_concurrency=k.max_concurrency).max_concurrency
                  for k in self.key_configs]  # fmt: skip
        if not limits or any(limit is None for limit in limits):
            return UNLIMITED_CONNECTIONS
        return max(1, sum(limit for limit in limits if limit is not None))

    @property
    def formats(self) -> frozenset[str]:
        if self.format == "both":
            return frozenset({"openai", "anthropic"})
        return frozenset([self.format] if isinstance(self.format, str) else self.format)

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def origin_url(self) -> str:
        """`base_url` without a trailing `/v1`: megagate appends `/v1/...` itself, as MegaLLM's two bases imply."""
        return re.sub(r"/v1/?$", "", self.base_url.rstrip("/"))

    @property
    def key_configs(self) -> list[KeyConfig]:
        return [k if isinstance(k, KeyConfig) else KeyConfig(key=k) for k in self.keys]


class Rotation(_Config, frozen=True):
    """How requests are spread over an upstream's keys (see `core.scheduler` and `middleware.rotation`)."""

    strategy: Literal["round_robin", "least_busy", "weighted"] = "round_robin"
    max_attempts: PositiveInt = 3  # tries of one request on different keys before the error reaches the client
    max_wait: NonNegativeFloat = 2.0  # seconds a request may wait for a key when all are saturated; 0: fail at once
    probe_interval: PositiveFloat = 600.0  # seconds before a key disabled by 401/403 is tried again
    failure_threshold: PositiveInt = 3  # consecutive 5xx/timeouts before a key is benched...
    failure_penalty: NonNegativeFloat = 5.0  # ...for this many seconds
    default_max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 1024  # completion estimate when max_tokens is unset
    # keep a conversation (prompt_cache_key, metadata.user_id or an x-session-id header) on one key while that key
    # has headroom, so the upstream's prompt cache keeps hitting; shared through the pool's store
    affinity: bool = False


class Hedging(_Config, frozen=True):
    """Race a second attempt when the first has sent no first byte after `delay` seconds (off unless configured)."""

    delay: PositiveFloat
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])  # globs of the models to hedge

    def applies_to(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class ClientConfig(_Config, frozen=True):
    """One client of megagate. Its key is kept only as a SHA-256 digest (`megagate hash-key` prints one); `key`
    (usually `env:NAME`) is hashed by `config_from_mapping` and dropped (only a ClientConfig built directly, as in
    tests, still holds one)."""

    name: str
    key_sha256: str | None = None
    key: str | None = None
    models: list[str] | None = None  # globs of the models it may use; None: any
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    revoked: bool = False
    budget: Budget | None = None  # USD per UTC day / month (core/budget.py)
    on_budget: str = "reject"  # over budget: 429 budget_exceeded, or the name of a cheaper model to serve instead

    @property
    def digest(self) -> str:
        return self.key_sha256.lower() if self.key_sha256 else hashlib.sha256((self.key or "").encode()).hexdigest()

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class PoolSettings(_Config, frozen=True):
    """Where the key pool's state lives: this process ("memory", the default) or Redis, shared by every worker and
    replica ("redis", with `redis_url` or MEGAGATE_REDIS_URL)."""

    store: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    # namespace of megagate's keys in Redis (they hold key ids only, never a secret); used as a cluster hash tag,
    # {prefix}, unless it already holds one, so that every script's keys share a slot (pool/redis_store.py)
    prefix: str = "megagate"
    redis_max_connections: PositiveInt = 32  # per process; callers wait for a free one within timeouts.pool
    lease_ttl: PositiveFloat = 60.0  # seconds a dead worker's slot stays taken; live streams renew theirs
    on_redis_error: Literal["fail", "local"] = "fail"  # 503 + Retry-After, or local pools at limits / workers
    workers: PositiveInt = 1  # processes sharing the keys: what the local fallback divides each limit by


class UsageSettings(_Config, frozen=True):
    """The usage ledger (megagate/ledger/): a SQLite file (the embedded default), PostgreSQL for several replicas,
    or off. Rows are written by one thread off the request path; `queue_size` rows wait while the database is
    slow or down, then the newest are dropped (counted)."""

    store: Literal["sqlite", "postgres", "off"] = "sqlite"
    path: str = "megagate-usage.db"  # the SQLite file (relative to the working directory)
    dsn: str | None = None  # PostgreSQL, e.g. "env:MEGAGATE_USAGE_DSN" (postgresql://user:pass@host/db)
    retention_days: PositiveFloat | None = 90.0  # per-request rows older than this are deleted; rollups stay
    queue_size: PositiveInt = 10_000


class AlertSettings(_Config, frozen=True):
    """Budget alerts: one JSON POST to `webhook` per budget, threshold (a fraction of the limit) and period."""

    webhook: str | None = None
    thresholds: tuple[Annotated[float, msgspec.Meta(gt=0)], ...] = (0.5, 0.8, 1.0)


class Tracing(_Config, frozen=True):
    """OpenTelemetry traces (needs the `tracing` extra): spans to the console or to an OTLP/HTTP endpoint."""

    exporter: Literal["console", "otlp"] = "console"
    endpoint: str | None = None  # OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = "megagate"


class Config(_Config, frozen=True):
    default_model: str = DEFAULT_MODEL
    defaults: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    upstreams: list[UpstreamConfig] = []
    timeouts: Timeouts = Timeouts()
    models_cache_ttl: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    # "fast": anyio streams + httptools (default, measured fastest); "httpcore": httpcore connections.
    transport: Literal["fast", "httpcore"] = "fast"
    rotation: Rotation = Rotation()
    fallbacks: dict[str, list[str]] = {}  # model -> the models to try, in order, when it fails
    hedging: Hedging | None = None
    clients: list[ClientConfig] = []  # none: the gateway is open (the seed design's keyless mode)
    debug: bool = False  # lets a request's `X-Debug: true` add diagnostic detail to its error responses
    access_log: bool = True  # one line per request on stderr (logger "megagate.access")
    log_format: Literal["json", "text"] = "json"  # a JSON object per line, or a short human line for local use
    body_timeout: PositiveFloat = 30.0  # seconds to receive a request body (a slow drip gets 408)
    metrics_model_cap: PositiveInt = 100  # distinct model label values before the rest count as "other"
    admin_token: str | None = None  # guards /admin/*; without one the admin routes do not exist
    pool: PoolSettings = PoolSettings()
    tracing: Tracing | None = None  # off unless present
    usage: UsageSettings = UsageSettings()
    alerts: AlertSettings = AlertSettings()
    prices: dict[str, Price] = {}  # model glob -> USD per million tokens; the first match wins (core/pricing.py)
    # ask the upstreams' model lists at start-up and every models_cache_ttl for the prices [prices] does not name
    # (MegaLLM lists `pricing` per model; each ask spends a request of one key). Off: learnt when /v1/models is
    # served anyway.
    upstream_prices: bool = False
    budgets: dict[str, Budget] = {}  # model glob -> USD per UTC day / month across all clients; the first match
    watch: bool = False  # reload when the file (MEGAGATE_CONFIG) changes, as on SIGHUP; each worker watches it

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("upstreams: at least one upstream is required")
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ConfigError("upstreams: upstream names must be unique")
        for index, client in enumerate(self.clients):
            if (client.key_sha256 is None) == (client.key is None):
                raise ConfigError(f"clients[{index}]: give exactly one of key_sha256 or key")
            if client.key_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", client.key_sha256):
                raise ConfigError(f"clients[{index}].key_sha256: must be 64 hex digits (megagate hash-key prints it)")
        if self.pool.store == "redis" and not self.pool.redis_url:
            raise ConfigError('pool.redis_url: required with store = "redis" (or set MEGAGATE_REDIS_URL)')
        if self.pool.redis_url:
            _check_redis_url(self.pool.redis_url)
        if self.alerts.webhook and not re.match(r"^https?://[^/\s]+", self.alerts.webhook):
            raise ConfigError("alerts.webhook: must be an http:// or https:// URL")
        if self.usage.store == "postgres" and not self.usage.dsn:
            raise ConfigError('usage.dsn: required with store = "postgres" (e.g. "env:MEGAGATE_USAGE_DSN")')
        if len({c.digest for c in self.clients}) != len(self.clients):
            raise ConfigError("clients: two clients share a key")
        for index, upstream in enumerate(self.upstreams):
            if not re.match(r"^https?://[^/\s]+", upstream.base_url):
                raise ConfigError(f"upstreams[{index}].base_url: must be an http:// or https:// URL")
            keys = [k.key for k in upstream.key_configs]
            if len(set(keys)) != len(keys) or not all(keys):
                raise ConfigError(f"upstreams[{index}].keys: keys must be non-empty and listed once each")

    def resolve_alias(self, model: str) -> str:
        return self.aliases.get(model, model)


def _resolve_env(value: Any, path: str, environ: Mapping[str, str]) -> Any:
    """Replace every `env:NAME` string inside `value` with the variable's value."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ConfigError(f"{path}: environment variable {name} is not set")
        return environ[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else k, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
    return value


def config_from_mapping(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from decoded TOML (or a dict in tests); `env:NAME` strings are resolved from `environ`."""
    env = os.environ if environ is None else environ
    resolved = _resolve_env(dict(data), "", env)
    if env.get("MEGAGATE_REDIS_URL"):  # the shared store from the environment, in either mode
        pool = resolved.setdefault("pool", {})
        if isinstance(pool, dict):
            pool.setdefault("redis_url", env["MEGAGATE_REDIS_URL"])
            pool.setdefault("store", "redis")
    clients = resolved.get("clients")
    if isinstance(clients, list):  # a client's raw key is hashed here and kept nowhere
        resolved["clients"] = [_hashed(client) for client in clients]
    try:
        return msgspec.convert(resolved, Config)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        raise ConfigError(f"{where.rstrip('`') or 'config'}: {message}") from None


def _hashed(client: Any) -> Any:
    if not isinstance(client, dict) or not isinstance(client.get("key"), str) or "key_sha256" in client:
        return client  # left for validation to report
    kept = {k: v for k, v in client.items() if k != "key"}
    kept["key_sha256"] = hashlib.sha256(client["key"].encode()).hexdigest()
    return kept


def _split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def config_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file a reload reads (`MEGAGATE_CONFIG`), or None in simple mode (environment only)."""
    path = (os.environ if environ is None else environ).get("MEGAGATE_CONFIG")
    return Path(path) if path else None


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from `MEGAGATE_CONFIG` (TOML) if set, else from the simple-mode environment variables."""
    env = os.environ if environ is None else environ
    path = env.get("MEGAGATE_CONFIG")
    if path:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"MEGAGATE_CONFIG: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"MEGAGATE_CONFIG: {path} is not valid TOML: {exc}") from None
        return config_from_mapping(data, env)
    keys = _split_keys(env.get("MEGALLM_API_KEYS", "")) or _split_keys(env.get("MEGALLM_API_KEY", ""))
    if not keys:
        raise ConfigError(
            "MEGALLM_API_KEYS: no upstream key configured; set MEGALLM_API_KEYS (comma-separated) or MEGAGATE_CONFIG"
        )
    upstream = {"name": "megallm", "base_url": env.get("MEGALLM_BASE_URL", MEGALLM_BASE_URL), "keys": keys}
    upstream["format"] = "both"
    simple: dict[str, Any] = {
        "default_model": env.get("MEGAGATE_DEFAULT_MODEL", DEFAULT_MODEL),
        "upstreams": [upstream],
    }
    if env.get("MEGAGATE_ADMIN_TOKEN"):
        simple["admin_token"] = env["MEGAGATE_ADMIN_TOKEN"]
    if clients := _split_keys(env.get("MEGAGATE_CLIENT_KEYS", "")):
        # "name:key" entries, or bare keys named by their public id
        simple["clients"] = [
            {"name": entry.split(":", 1)[0], "key": entry.split(":", 1)[1]}
            if ":" in entry
            else {"name": key_id(entry), "key": entry}
            for entry in clients
        ]
    return config_from_mapping(simple, env)


def log_level(environ: Mapping[str, str] | None = None) -> str:
    """`MEGAGATE_LOG_LEVEL` (default INFO), for `megagate serve` and `demo`."""
    return (os.environ if environ is None else environ).get("MEGAGATE_LOG_LEVEL", "INFO")


def prometheus_multiprocess(environ: Mapping[str, str] | None = None) -> bool:
    """Whether prometheus-client's multiprocess mode is on (`PROMETHEUS_MULTIPROC_DIR`, the library's own switch)."""
    return bool((os.environ if environ is None else environ).get("PROMETHEUS_MULTIPROC_DIR"))


def _check_redis_url(url: str) -> None:
    """The URL as the Redis client will read it, and the TLS files it names: one line each, at load (and so in
    `megagate check-config`), never at the first request."""
    try:
        target = parse_redis_url(url)
    except RedisURLError as exc:
        raise ConfigError(f"pool.redis_url: {exc}") from None
    for option, path in (("ssl_ca_certs", target.ca_certs), ("ssl_certfile", target.certfile),
                         ("ssl_keyfile", target.keyfile)):  # fmt: skip
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"pool.redis_url: {option}: no such file: {path}")
    if target.keyfile is not None and target.certfile is None:
        raise ConfigError("pool.redis_url: ssl_keyfile needs ssl_certfile (the client certificate)")
