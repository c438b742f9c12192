"""Where budget spend and reservations live: this process (`LocalBudgets`, over `core.budget.BudgetBook`, seeded
from the usage ledger at start-up so that a restart keeps the day's spend) or Redis (`RedisBudgets`, shared by
every worker and replica, atomic in Lua, with Redis' clock for when a dead worker's reservation lapses).

Redis keys: `{prefix}:budget:<scope>:<period>` (a hash: `spent`, `reserved` and each reservation `r:<id>`) and
`...:exp` (reservation ids by when they lapse). They expire a few days (a month's: weeks) after their last use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import anyio

from megagate.core.budget import BudgetBook, Line, Refusal, resets_in
from megagate.core.errors import PoolUnavailable, RedisError
from megagate.pool.redis_store import hash_tagged
from megagate.pool.resp import RedisClient

logger = logging.getLogger("megagate.pool")
KEEP_MS = {"daily": 3 * 86_400_000, "monthly": 40 * 86_400_000}

RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amount, id, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, n do
  local h, e = KEYS[2 * i - 1], KEYS[2 * i]
  while true do  -- reservations whose worker died lapse, in chunks
    local lapsed = redis.call('ZRANGEBYSCORE', e, '-inf', now, 'LIMIT', 0, 500)
    for _, r in ipairs(lapsed) do
      redis.call('HINCRBYFLOAT', h, 'reserved', -tonumber(redis.call('HGET', h, 'r:' .. r) or '0'))
      redis.call('HDEL', h, 'r:' .. r)
      redis.call('ZREM', e, r)
    end
    if #lapsed < 500 then break end
  end
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  local limit = tonumber(ARGV[4 + i])
  if spent >= limit or spent + math.max(reserved, 0) + amount > limit then return {i, tostring(spent)} end
end
for i = 1, n do
  local h, e = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HSET', h, 'r:' .. id, amount)
  redis.call('HINCRBYFLOAT', h, 'reserved', amount)
  redis.call('ZADD', e, now + ttl, id)
  redis.call('PEXPIRE', h, ARGV[4 + n + i])
  redis.call('PEXPIRE', e, ARGV[4 + n + i])
end
return {0, ''}
"""
SETTLE = """
local id, cost, spent = ARGV[1], tonumber(ARGV[2]), {}
for i = 1, #KEYS, 2 do
  local h, e = KEYS[i], KEYS[i + 1]
  local held = redis.call('HGET', h, 'r:' .. id)
  if held then
    redis.call('HINCRBYFLOAT', h, 'reserved', -tonumber(held))
    redis.call('HDEL', h, 'r:' .. id)
    redis.call('ZREM', e, id)
  end
  spent[#spent + 1] = redis.call('HINCRBYFLOAT', h, 'spent', cost)  -- counted even past a lapsed reservation
end
return spent
"""


class LocalBudgets:
    def __init__(self, book: BudgetBook | None = None) -> None:
        self.book = book or BudgetBook()
        self._crossed: set[tuple[str, float]] = set()

    async def reserve(self, lines: Sequence[Line], amount: float, reservation: str, now: float) -> Refusal | list[str]:
        return self.book.reserve(lines, amount, reservation, now)

    async def settle(self, keys: Sequence[str], reservation: str, cost: float) -> list[float]:
        """Settle, and say what each budget has spent since (for the alerts). Nothing here awaits, so a cancelled
        request cannot interrupt it: no shielded scope (about 10 µs on asyncio)."""
        self.book.settle(keys, reservation, cost)
        return [self.book.spent(key) for key in keys]

    async def first_crossing(self, key: str, period: str, threshold: float) -> bool:
        """Whether this is the first time `key` is told past `threshold` (one alert per threshold and period)."""
        if (key, threshold) in self._crossed:
            return False
        self._crossed.add((key, threshold))
        return True


class RedisBudgets:
    """The book in Redis. A reservation lapses after `ttl` seconds (a worker that died mid-request)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "megagate",
        ttl: float = 3600.0,
        on_redis_error: Literal["fail", "local"] = "fail",
    ) -> None:
        self.client = client
        self.prefix = hash_tagged(prefix)
        self.ttl = ttl
        self.on_redis_error = on_redis_error
        self.local = LocalBudgets()
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)

    def _keys(self, key: str) -> list[str]:
        base = f"{self.prefix}:budget:{key}"
        return [base, base + ":exp"]

    async def reserve(self, lines: Sequence[Line], amount: float, reservation: str, now: float) -> Refusal | list[str]:
        keys = [line.key(now) for line in lines]
        redis_keys = [k for key in keys for k in self._keys(key)]
        args: list[Any] = [amount, reservation, self.ttl, len(lines), *(line.limit for line in lines),
                           *(KEEP_MS[line.period] for line in lines)]  # fmt: skip
        try:
            refused, spent = await self._reserve(keys=redis_keys, args=args)
        except RedisError as exc:
            return await self._unavailable(exc, lines, amount, reservation, now)
        if int(refused):
            line = lines[int(refused) - 1]
            return Refusal(line, float(spent), resets_in(line.period, now))
        return keys

    async def settle(self, keys: Sequence[str], reservation: str, cost: float) -> list[float]:
        if keys and keys[0].startswith("local:"):
            return await self.local.settle([k.removeprefix("local:") for k in keys], reservation, cost)
        try:
            redis_keys = [k for key in keys for k in self._keys(key)]
            with anyio.CancelScope(shield=True):  # a cancelled request's reservation is settled all the same
                spent = await self._settle(keys=redis_keys, args=[reservation, cost])
        except RedisError as exc:
            logger.warning("budgets: a settlement did not reach Redis (%s); its reservation lapses", exc)
            return []
        return [float(value) for value in spent]

    async def first_crossing(self, key: str, period: str, threshold: float) -> bool:
        """Once across every worker and replica: the first to claim the alert sends it."""
        if key.startswith("local:"):
            return await self.local.first_crossing(key, period, threshold)
        try:
            with anyio.CancelScope(shield=True):
                claim = f"{self.prefix}:alert:{key}:{threshold:g}"
                claimed = await self.client.execute("SET", claim, "1", "NX", "PX", KEEP_MS[period])
        except RedisError:
            return False  # not sure it is the first: another worker may have sent it
        return claimed is not None

    async def _unavailable(
        self, exc: RedisError, lines: Sequence[Line], amount: float, reservation: str, now: float
    ) -> Refusal | list[str]:
        logger.warning("budgets: Redis unavailable (%s)", exc)
        if self.on_redis_error == "fail":
            raise PoolUnavailable("the shared budgets are unavailable; retry shortly", retry_after=1.0) from None
        held = await self.local.reserve(lines, amount, reservation, now)
        return held if isinstance(held, Refusal) else [f"local:{key}" for key in held]
