"""The key pool: the small async interface the rotation middleware talks to, and its in-process implementation.

`KeyPool` is the seam for running several workers or replicas: `acquire` (lease a key, waiting a bounded time when
all are saturated), `release` (return the lease with its outcome) and `report` (each key's state, for the admin
view and metrics). `local.LocalKeyPool` wraps the pure `core.scheduler.KeyScheduler` with a clock and the waiting;
`redis_store.RedisKeyPool` implements the same calls over windows shared through Redis.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from megagate.core.outcome import Outcome

# When the scheduler cannot say when a key frees up (only a release can), suggest this Retry-After.
RETRY_AFTER_UNKNOWN = 1.0
AFFINITY_SESSIONS = 10_000  # sessions remembered per pool (least recent forgotten first)


class KeyLease(msgspec.Struct, frozen=True):
    """A leased key. `key` is the secret itself: it goes into the upstream request and nowhere else."""

    key: str
    id: str
    mask: str
    handle: object  # the implementation's own record of the lease


class KeyReport(msgspec.Struct, kw_only=True):
    """One key's state as the admin view shows it. No secret: only the stable id and the mask."""

    id: str
    mask: str
    upstream: str
    state: Literal["active", "cooling", "disabled"]
    cooling_for: float | None  # seconds left of a cooldown of the whole key
    cooling_models: dict[str, float]  # seconds left of cooldowns for single models (429s for that model)
    in_flight: int
    requests_last_minute: int
    tokens_last_minute: int
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    last_error: str | None


class KeyPool(Protocol):
    async def acquire(
        self,
        tokens: int,
        *,
        model: str | None = None,
        exclude: frozenset[str] = frozenset(),
        max_wait: float = 0.0,
        session: str | None = None,
    ) -> KeyLease:
        """Lease a key with headroom for `tokens` and not cooling for `model`, not one of `exclude` (ids). Waits up
        to `max_wait` seconds for one to free up, then raises NoKeyAvailable with a Retry-After. With `session`,
        the key that conversation last used is preferred while it has headroom (affinity)."""
        ...

    async def release(
        self,
        lease: KeyLease,
        outcome: Outcome,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
        error: str | None = None,
    ) -> None:
        """Return `lease` exactly once, on every path, with what happened to its request."""
        ...

    async def report(self) -> list[KeyReport]: ...

    def usable(self) -> bool:
        """Whether any key is neither disabled nor cooling (readiness)."""
        ...
