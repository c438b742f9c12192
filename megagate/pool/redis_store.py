"""RedisKeyPool: the KeyPool interface over Redis, so that every worker and replica shares one set of key limits.

The policy is the in-process scheduler's (`core.scheduler`), applied atomically by Lua scripts, one round trip per
acquire and per release, with `redis.call('TIME')` as the clock (replicas' clocks do not matter):
- rpm and tpm: a 60 s sliding window per key, a sorted set of lease ids by time plus a hash of their token counts
  (the estimate reserved at acquire, settled against the real usage at release);
- concurrency: leases with expiry, a sorted set of lease ids scored by when they lapse. Acquire drops lapsed ones,
  checks, adds; release removes; long streams are renewed by `maintain()` while they run. A worker that dies
  mid-stream frees its slots within the lease TTL; there is no bare counter to leak;
- cooldowns (per key and per model, the later deadline kept), disabled keys and their probe, the round-robin
  cursor: in a hash per key and a counter per upstream.
Redis holds key ids only (`key-` + 8 hex), never a key. Its keys are `{<prefix>}:<upstream>:<key id>:<what>`:
the prefix is a hash tag, so every key a script touches lives in one slot and a Redis Cluster (or a proxy that
checks slots) runs the scripts on its one shard instead of answering CROSSSLOT. A prefix that already holds a
`{tag}` is used as written.

When Redis cannot be reached, `on_redis_error` decides: "fail" answers 503 with a Retry-After; "local" serves from
an in-process pool whose limits are the key's divided by the workers, and goes back to Redis once it answers again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from megagate.asgi import Clock
from megagate.config import KeyConfig, Rotation
from megagate.core.errors import NoKeyAvailable, NoUsableKey, PoolUnavailable, RedisError
from megagate.core.outcome import Outcome
from megagate.core.scheduler import KeyLimits
from megagate.core.secrets import key_id, mask_key
from megagate.pool import RETRY_AFTER_UNKNOWN, KeyLease, KeyReport
from megagate.pool.local import LocalKeyPool
from megagate.pool.redis_scripts import ACQUIRE, RELEASE, RENEW, REPORT
from megagate.pool.resp import RedisClient

logger = logging.getLogger("megagate.pool")
POLL = 0.05  # seconds between tries while waiting on keys other processes hold (no pub/sub round trip per release)
RETRY_REDIS_AFTER = 1.0  # after a failure, the local fallback serves this long before Redis is asked again
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


# Shared by the scripts: a 60 s window (sorted set of entry ids by time + hash of their tokens), as core.window.
@dataclass(frozen=True, slots=True)
class _RedisLease:
    index: int
    lease_id: str
    probe: bool
    model: str | None


class RedisKeyPool:
    """A KeyPool whose windows, leases and cooldowns live in Redis (`client`, entered by the owner)."""

    def __init__(
        self,
        upstream: str,
        keys: Sequence[KeyConfig],
        rotation: Rotation | None = None,
        *,
        client: RedisClient,
        prefix: str = "megagate",
        lease_ttl: float = 60.0,
        on_redis_error: Literal["fail", "local"] = "fail",
        workers: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rotation = rotation or Rotation()
        self.upstream = upstream
        self.client = client
        self.lease_ttl = lease_ttl
        self.on_redis_error = on_redis_error
        self._clock = clock
        self._keys = [k.key for k in keys]
        self._ids = [key_id(k) for k in self._keys]
        self._limits = [KeyLimits.for_tier(k.tier, rpm=k.rpm, tpm=k.tpm, max_concurrency=k.max_concurrency)
                        for k in keys]  # fmt: skip
        prefix = hash_tagged(prefix)
        self._redis_keys = [[f"{prefix}:{upstream}:{i}:{what}" for what in ("win", "tok", "lease", "st", "mcool")]
                            for i in self._ids]  # fmt: skip
        self._cursor_key = f"{prefix}:{upstream}:rr"
        self._prefix = prefix
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._report = client.register_script(REPORT)
        self._renew = client.register_script(RENEW)
        self._held: dict[str, str] = {}  # lease id -> its lease set, renewed by maintain() (shared across reloads)
        self._usable = True
        self._redis_down_until = 0.0
        self.local = LocalKeyPool(upstream, [_divided(k, workers) for k in keys], rotation, clock=clock)

    # --- KeyPool ---

    async def acquire(
        self,
        tokens: int,
        *,
        model: str | None = None,
        exclude: frozenset[str] = frozenset(),
        max_wait: float = 0.0,
        session: str | None = None,
    ) -> KeyLease:
        if len(set(exclude) & set(self._ids)) == len(self._ids):
            raise NoKeyAvailable(f"Every key of upstream '{self.upstream}' was already tried for this request.")
        deadline = self._clock() + max_wait
        while True:
            if self._clock() < self._redis_down_until:
                return await self._fallback(tokens, model, exclude, deadline, session)
            lease_id = secrets.token_hex(8)
            args = self._acquire_args(tokens, model, exclude, lease_id, session is not None)
            keys = self._all_keys()
            if session is not None:  # only a digest of the session's name is stored
                keys.append(f"{self._prefix}:{self.upstream}:aff:{hashlib.sha256(session.encode()).hexdigest()[:24]}")
            try:
                answer = await self._call(self._acquire, keys, args)
            except PoolUnavailable:
                return await self._fallback(tokens, model, exclude, deadline, session)
            index = int(answer[0])
            if index >= 0:
                return self._lease(index, bool(int(answer[1])), model, lease_id)
            seconds = float(answer[1]) if answer[1] else None
            refused, release_helps = bool(int(answer[2])), bool(int(answer[3]))
            remaining = deadline - self._clock()
            if refused:
                self._usable = False
                wait = seconds if seconds is not None else RETRY_AFTER_UNKNOWN
                raise NoUsableKey(
                    f"no usable upstream key: refused by the upstream (every key of '{self.upstream}' got 401/403); "
                    f"the next probe is in {wait:.0f} s.",
                    retry_after=wait,
                )
            if remaining <= 0 or (seconds is not None and seconds > remaining and not release_helps):
                wait = seconds if seconds is not None else RETRY_AFTER_UNKNOWN
                raise NoKeyAvailable(
                    f"All keys of upstream '{self.upstream}' are at their rate limits, cooling down or disabled; "
                    f"retry in {wait:.1f} s.",
                    retry_after=wait,
                )
            # Other processes release without telling us: look again soon, or when the earliest key is ready.
            await anyio.sleep(min(POLL if release_helps else (seconds or POLL), remaining))

    async def release(
        self,
        lease: KeyLease,
        outcome: Outcome,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
        error: str | None = None,
    ) -> None:
        if not isinstance(lease.handle, _RedisLease):
            await self.local.release(lease, outcome, tokens_used=tokens_used, retry_after=retry_after, error=error)
            return
        handle = lease.handle
        self._held.pop(handle.lease_id, None)
        rotation = self.rotation
        args = [handle.lease_id, outcome.value, "" if tokens_used is None else tokens_used,
                "" if retry_after is None else retry_after, handle.model or "", (error or "")[:300],
                rotation.probe_interval, rotation.failure_threshold, rotation.failure_penalty,
                1 if handle.probe else 0]  # fmt: skip
        try:
            await self._call(self._release, self._redis_keys[handle.index], args)
        except PoolUnavailable:
            logger.warning("key pool: a release did not reach Redis; its lease lapses within %g s", self.lease_ttl)

    async def report(self) -> list[KeyReport]:
        try:
            rows = await self._call(self._report, self._all_keys()[1:], [])
        except PoolUnavailable:
            return await self.local.report()
        reports = []
        for index, row in enumerate(rows):
            disabled, cool_left = row[0] == b"1", float(row[1])
            models = {row[6][j].decode(): round(float(row[6][j + 1]), 3) for j in range(0, len(row[6]), 2)}
            limits = self._limits[index]
            reports.append(KeyReport(
                id=self._ids[index], mask=mask_key(self._keys[index]), upstream=self.upstream,
                state="disabled" if disabled else "cooling" if cool_left > 0 else "active",
                cooling_for=round(cool_left, 3) if cool_left > 0 else None, cooling_models=models,
                in_flight=int(row[2]), requests_last_minute=int(row[3]), tokens_last_minute=int(float(row[4])),
                rpm=limits.rpm, tpm=limits.tpm, max_concurrency=limits.max_concurrency,
                last_error=row[5].decode() or None,
            ))  # fmt: skip
        self._usable = any(r.state == "active" for r in reports)
        return reports

    def usable(self) -> bool:
        return self._usable

    async def maintain(self) -> None:
        """Renew the leases this process holds (long streams) and refresh `usable`: the Gateway's lifespan calls
        it every third of the lease TTL."""
        held = list(self._held.items())
        if held:
            try:
                await self._call(self._renew, [zset for _, zset in held], [self.lease_ttl, *(i for i, _ in held)])
            except PoolUnavailable:
                return
        await self.report()

    def adopt(self, previous: RedisKeyPool) -> None:
        """Take over from the pool a reload replaces: its leases still running keep being renewed. Windows,
        cooldowns and in-flight counts live in Redis by key id, so kept keys keep them with no copying."""
        self._held = previous._held

    # --- internals ---

    def _all_keys(self) -> list[str]:
        return [self._cursor_key, *(name for names in self._redis_keys for name in names)]

    def _acquire_args(
        self, tokens: int, model: str | None, exclude: frozenset[str], lease_id: str, session: bool
    ) -> list[Any]:
        args: list[Any] = [tokens, model or "", lease_id, self.lease_ttl, self.rotation.strategy, len(self._ids)]
        args.append(1 if session else 0)
        for id_, limits in zip(self._ids, self._limits, strict=True):
            args += [limits.rpm or 0, limits.tpm or 0, limits.max_concurrency or 0, 1 if id_ in exclude else 0]
        return args

    def _lease(self, index: int, probe: bool, model: str | None, lease_id: str) -> KeyLease:
        self._held[lease_id] = self._redis_keys[index][2]
        handle = _RedisLease(index, lease_id, probe, model)
        return KeyLease(self._keys[index], self._ids[index], mask_key(self._keys[index]), handle)

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """One script call (the client bounds it); Redis' and the network's failures become PoolUnavailable here."""
        try:
            result = await script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self._redis_down_until = self._clock() + RETRY_REDIS_AFTER
            logger.warning("key pool: Redis unavailable (%s: %s)", type(exc).__name__, exc)
            raise PoolUnavailable(
                "the shared key pool is unavailable; retry shortly", retry_after=RETRY_REDIS_AFTER
            ) from None
        self._redis_down_until = 0.0
        return result

    async def _fallback(
        self, tokens: int, model: str | None, exclude: frozenset[str], deadline: float, session: str | None
    ) -> KeyLease:
        if self.on_redis_error == "fail":
            raise PoolUnavailable("the shared key pool is unavailable; retry shortly", retry_after=RETRY_REDIS_AFTER)
        wait = max(0.0, deadline - self._clock())
        return await self.local.acquire(tokens, model=model, exclude=exclude, max_wait=wait, session=session)


def hash_tagged(prefix: str) -> str:
    """`{prefix}`, unless the prefix holds a hash tag already (`{team-a}:megagate`)."""
    return prefix if re.search(r"\{[^}]+\}", prefix) else f"{{{prefix}}}"


def _divided(key: KeyConfig, workers: int) -> KeyConfig:
    """A key's limits shared out over `workers` processes, for the local fallback (at least 1 of each)."""
    limits = KeyLimits.for_tier(key.tier, rpm=key.rpm, tpm=key.tpm, max_concurrency=key.max_concurrency)

    def part(value: int | None) -> int | None:
        return max(1, value // workers) if value is not None else None

    return KeyConfig(key=key.key, rpm=part(limits.rpm), tpm=part(limits.tpm),
                     max_concurrency=part(limits.max_concurrency), weight=key.weight)  # fmt: skip
