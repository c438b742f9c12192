"""The resolved configuration in a few lines, secrets masked: what `megagate check-config` prints and `megagate
serve` shows at start-up. Keys appear as their id and mask, client keys not at all, URLs without passwords."""

from __future__ import annotations

import re

from megagate.config import Config, UpstreamConfig
from megagate.core.budget import Budget
from megagate.core.scheduler import KeyLimits
from megagate.core.secrets import key_id, mask_key

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def _url(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url)


def _limits(limits: KeyLimits) -> str:
    parts = [f"rpm {limits.rpm}" if limits.rpm else "", f"tpm {limits.tpm}" if limits.tpm else "",
             f"concurrency {limits.max_concurrency}" if limits.max_concurrency else ""]  # fmt: skip
    return ", ".join(p for p in parts if p) or "no limits"


def _upstream(upstream: UpstreamConfig) -> list[str]:
    formats = upstream.format if isinstance(upstream.format, str) else ", ".join(upstream.format)
    lines = [f"  upstream {upstream.name}: {_url(upstream.base_url)} ({formats}; models {', '.join(upstream.models)})"]
    for key in upstream.key_configs:
        limits = KeyLimits.for_tier(key.tier, rpm=key.rpm, tpm=key.tpm, max_concurrency=key.max_concurrency)
        tier = f"tier {key.tier}, " if key.tier else ""
        lines.append(f"    {key_id(key.key)}  {mask_key(key.key)}  {tier}{_limits(limits)}")
    if not upstream.keys:
        lines.append("    (no keys: requests go without one)")
    return lines


def describe(config: Config) -> str:
    """One short block: upstreams and their keys, clients, fallbacks, timeouts, pool, rotation, admin."""
    lines = [f"megagate configuration: default model {config.default_model}"]
    for upstream in config.upstreams:
        lines += _upstream(upstream)
    if config.clients:
        described = []
        for client in config.clients:
            rules = [f"models {', '.join(client.models)}" if client.models else "",
                     f"rpm {client.rpm}" if client.rpm else "", f"tpm {client.tpm}" if client.tpm else "",
                     "revoked" if client.revoked else ""]  # fmt: skip
            extra = "; ".join(r for r in rules if r)
            described.append(f"{client.name}{f' ({extra})' if extra else ''}")
        lines.append(f"  clients: {', '.join(described)}")
    else:
        lines.append("  clients: none (open: anyone who reaches megagate may use it)")
    if config.fallbacks:
        chains = "; ".join(f"{model} -> {', '.join(chain)}" for model, chain in config.fallbacks.items())
        lines.append(f"  fallbacks: {chains}")
    if config.aliases:
        lines.append(f"  aliases: {', '.join(f'{a} -> {m}' for a, m in config.aliases.items())}")
    if config.prices:
        described = [f"{glob} in {p.input:g} out {p.output:g}"
                     + (f" cache read {p.cache_read:g}" if p.cache_read is not None else "")
                     + (f" cache write {p.cache_write:g}" if p.cache_write is not None else "")
                     for glob, p in config.prices.items()]  # fmt: skip
        lines.append(f"  prices (USD per 1M tokens, first match wins): {'; '.join(described)}")
    else:
        lines.append("  prices: none (every answer is unpriced: its cost is unknown, not 0)")
    usage = config.usage
    where = {"off": "off", "sqlite": f"sqlite {usage.path}", "postgres": "postgres (dsn set)"}[usage.store]
    lines.append(f"  usage ledger: {where}" + (f", rows kept {usage.retention_days:g} days" if usage.store != "off"
                                                and usage.retention_days else ""))  # fmt: skip
    budgeted = [f"client {c.name}: {_budget(c.budget)}" + (f", then {c.on_budget}" if c.on_budget != "reject" else "")
                for c in config.clients if c.budget is not None]  # fmt: skip
    budgeted += [f"model {glob}: {_budget(budget)}" for glob, budget in config.budgets.items()]
    if budgeted:
        lines.append(f"  budgets (USD): {'; '.join(budgeted)}")
    if config.alerts.webhook:
        lines.append(f"  budget alerts: at {', '.join(f'{t:.0%}' for t in config.alerts.thresholds)} of a budget")
    t = config.timeouts
    lines.append(f"  timeouts: connect {t.connect:g} s, read {t.read:g} s, first byte {t.first_byte:g} s, "
                 f"total {t.total:g} s")  # fmt: skip
    pool = config.pool
    where = "memory (this process)" if pool.store == "memory" else f"redis {_url(pool.redis_url or '')}"
    extra = f", lease ttl {pool.lease_ttl:g} s, on redis error {pool.on_redis_error}" if pool.store == "redis" else ""
    r = config.rotation
    lines.append(f"  pool: {where}{extra}; {r.strategy}, {r.max_attempts} attempts, max wait {r.max_wait:g} s, "
                 f"affinity {'on' if r.affinity else 'off'}")  # fmt: skip
    lines.append(f"  admin routes: {'on (token set)' if config.admin_token else 'off (no admin_token)'}")
    triggers = ["SIGHUP to a worker", *(["POST /admin/reload"] if config.admin_token else [])]
    triggers += ["the file changing (watch = true)"] if config.watch else []
    lines.append(f"  reload: on {', '.join(triggers)}")
    return "\n".join(lines)


def _budget(budget: Budget) -> str:
    return ", ".join(f"{period} {getattr(budget, period):g}" for period in ("daily", "monthly")
                     if getattr(budget, period) is not None)  # fmt: skip
