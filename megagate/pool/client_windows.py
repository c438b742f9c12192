"""`RedisClientWindows`: each client's rpm/tpm window in Redis, shared by every worker and replica."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from megagate.pool.redis_scripts import CLIENT_ADMIT, CLIENT_SETTLE
from megagate.pool.redis_store import REDIS_ERRORS, hash_tagged
from megagate.pool.resp import RedisClient

logger = logging.getLogger("megagate.pool")


class RedisClientWindows:
    """Per-client rpm/tpm windows in Redis, so that a client's limits hold across every worker and replica (the
    ClientWindows of ClientLimitsMiddleware). When Redis does not answer, the client is admitted: its own limits
    are megagate's courtesy, the keys' limits still hold."""

    def __init__(self, client: RedisClient, *, prefix: str = "megagate") -> None:
        self.client = client
        self.prefix = hash_tagged(prefix)  # every key of a script in one cluster slot
        self._admit = client.register_script(CLIENT_ADMIT)
        self._settle = client.register_script(CLIENT_SETTLE)

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}:client:{name}"
        return [f"{base}:win", f"{base}:tok", f"{base}:none"]

    async def admit(self, name: str, rpm: int | None, tpm: int | None, tokens: int) -> str | float:
        """An entry id to settle later, or the seconds to wait before the client may send this request."""
        entry = secrets.token_hex(8)
        try:
            answer: Any = await self._admit(keys=self._keys(name), args=[tokens, rpm or 0, tpm or 0, entry])
        except REDIS_ERRORS as exc:
            logger.warning("client limits: Redis unavailable (%s); admitting %s", type(exc).__name__, name)
            return ""
        return float(answer) if answer else entry

    async def settle(self, name: str, entry: str, tokens_used: int) -> None:
        if not entry:
            return
        try:
            await self._settle(keys=self._keys(name)[:2], args=[entry, tokens_used])
        except REDIS_ERRORS:
            return  # the estimate stays; it leaves the window within a minute
