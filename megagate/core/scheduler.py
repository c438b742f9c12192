"""A sans-I/O, rate-limit-aware scheduler for a pool of upstream keys: which key for this request, and what
its outcome means for the key.

Theory of operation: every call takes `now` (monotonic seconds); nothing here reads a clock, sleeps or awaits.
Each key keeps a 60 s sliding window of request times and token counts, its in-flight count, a cooldown and a
disabled flag. `acquire` skips keys without headroom *before* the request is sent (so 429s are avoided rather than
suffered), and when no key can serve it returns a `Wait` saying when the earliest one will (or that a slot must be
released first). `release` records the outcome: real token usage replaces the estimate; 429 cools the key for
Retry-After or an exponential backoff (1 s doubling, capped at 60 s); 401/403 disables it until a probe after
`probe_interval` succeeds; repeated 5xx/timeouts earn a short penalty.

A 429 (or a run of 5xx) for a request that named its model cools the key *for that model only*: the configured
rpm/tpm/concurrency already keep a key inside its own limits, so a 429 that still happens is the upstream limiting
that model (which is why MegaLLM's `fallback_on_rate_limit` helps at all), and a 5xx is about the model or the
upstream, not the key. A lease without a model cools the whole key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from megagate.core.outcome import Outcome
from megagate.core.window import WINDOW as WINDOW  # re-exported: tests and callers know the window from here
from megagate.core.window import SlidingWindow

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
TIERS = {"basic": (60, 90_000, 10), "pro": (300, 450_000, 40)}  # MegaLLM's published rpm, tpm, concurrency

Strategy = Literal["round_robin", "least_busy", "weighted"]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    weight: float = 1.0

    @classmethod
    def for_tier(cls, tier: str | None, **overrides: float | None) -> KeyLimits:
        rpm, tpm, concurrency = TIERS[tier] if tier else (None, None, None)
        values: dict[str, float | None] = {"rpm": rpm, "tpm": tpm, "max_concurrency": concurrency}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


@dataclass(slots=True)
class KeyState:
    """One key's live state: its rpm/tpm window, in-flight count, cooldowns and whether it is disabled."""

    id: str
    limits: KeyLimits
    window: SlidingWindow = field(default_factory=SlidingWindow)
    in_flight: int = 0
    cooldown_until: float = 0.0
    model_cooldowns: dict[str, float] = field(default_factory=dict)
    backoff: float = 0.0
    failures: int = 0
    disabled: bool = False
    probe_at: float = 0.0
    probing: bool = False
    last_error: str | None = None
    current_weight: float = 0.0

    def __post_init__(self) -> None:
        self.window.rpm, self.window.tpm = self.limits.rpm, self.limits.tpm

    def cool(self, model: str | None, until: float) -> None:
        """Rest this key until `until`: for `model` only when the failure was about a model, else entirely."""
        if model is None:
            self.cooldown_until = max(self.cooldown_until, until)
        else:
            self.model_cooldowns[model] = max(self.model_cooldowns.get(model, 0.0), until)

    def ready_at(self, tokens: int, now: float, model: str | None = None) -> float | None:
        """When this key could take a request of `tokens` (now if it can), or None if only a release can help."""
        if self.disabled:
            return now if now >= self.probe_at and not self.probing else max(self.probe_at, now + 1.0)
        at = max(now, self.cooldown_until)
        if model is not None and model in self.model_cooldowns:
            if self.model_cooldowns[model] <= now:
                del self.model_cooldowns[model]
            else:
                at = max(at, self.model_cooldowns[model])
        at = max(at, self.window.ready_at(tokens, now))
        limits = self.limits
        if limits.max_concurrency is not None and self.in_flight >= limits.max_concurrency and at <= now:
            return None  # ready but for a free slot: only a release helps
        return at


@dataclass(frozen=True, slots=True)
class Lease:
    index: int
    key_id: str
    tokens: int
    entry: list[float]
    probe: bool = False
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """No key can serve now. `seconds` until the earliest can, or None if only a release frees one. `refused`: every
    candidate key is disabled after a 401/403 (then `seconds` runs to the next probe): no wait, however long, is a
    rate limit, and the client must not be told it is one."""

    seconds: float | None
    refused: bool = False
    release_helps: bool = False  # some key is held back only by its concurrency: a release may free it any moment


class KeyScheduler:
    def __init__(
        self,
        ids: Sequence[str],
        limits: Sequence[KeyLimits] | None = None,
        *,
        strategy: Strategy = "round_robin",
        probe_interval: float = 600.0,
        failure_threshold: int = 3,
        failure_penalty: float = 5.0,
    ) -> None:
        if not ids:
            raise ValueError("a key scheduler needs at least one key")
        limits = limits or [KeyLimits()] * len(ids)
        self.keys = [KeyState(key_id, lim) for key_id, lim in zip(ids, limits, strict=True)]
        self.strategy = strategy
        self.probe_interval = probe_interval
        self.failure_threshold = failure_threshold
        self.failure_penalty = failure_penalty
        self._cursor = 0

    def acquire(
        self,
        tokens: int,
        now: float,
        exclude: frozenset[int] = frozenset(),
        model: str | None = None,
        prefer: int | None = None,
    ) -> Lease | Wait:
        """Lease a key for a request for `model` estimated at `tokens`, or say how long until one could serve it.
        `prefer` (session affinity) is taken first when it has headroom now, without moving the rotation."""
        if prefer is not None and prefer not in exclude and 0 <= prefer < len(self.keys):
            key = self.keys[prefer]
            key.window.prune(now)
            at = key.ready_at(tokens, now, model)
            if at is not None and at <= now and not key.disabled:
                return self._lease(prefer, tokens, now, model)
        earliest: float | None = None
        candidates: list[int] = []
        refused = True
        release_helps = False
        count = len(self.keys)
        for offset in range(count):
            index = (self._cursor + offset) % count
            if index in exclude:
                continue
            key = self.keys[index]
            key.window.prune(now)
            refused = refused and key.disabled
            at = key.ready_at(tokens, now, model)
            if at is not None and at <= now:
                if self.strategy == "round_robin":
                    self._cursor = index + 1
                    return self._lease(index, tokens, now, model)
                candidates.append(index)
            elif at is None:
                release_helps = True
            elif earliest is None or at < earliest:
                earliest = at
        if candidates:
            return self._lease(self._choose(candidates, now), tokens, now, model)
        return Wait(None if earliest is None else earliest - now, refused, release_helps)

    def _choose(self, candidates: list[int], now: float) -> int:
        keys = self.keys
        if self.strategy == "least_busy":
            return min(candidates, key=lambda i: (keys[i].in_flight, -keys[i].window.headroom()))
        # weighted: smooth weighted round robin (as nginx): even spread in proportion to weight
        total = 0.0
        best = candidates[0]
        for i in candidates:
            keys[i].current_weight += keys[i].limits.weight
            total += keys[i].limits.weight
            if keys[i].current_weight > keys[best].current_weight:
                best = i
        keys[best].current_weight -= total
        return best

    def _lease(self, index: int, tokens: int, now: float, model: str | None) -> Lease:
        key = self.keys[index]
        probe = key.disabled
        if probe:
            key.probing = True
        key.in_flight += 1
        entry = key.window.record(tokens, now)
        return Lease(index, key.id, tokens, entry, probe, model)

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
        error: str | None = None,
    ) -> None:
        """Return a lease with its outcome. Call exactly once per lease, on every path."""
        key = self.keys[lease.index]
        key.in_flight -= 1
        if tokens_used is not None:
            key.window.settle(lease.entry, tokens_used, now)
        if lease.probe:
            key.probing = False
        if outcome is Outcome.SUCCESS:
            key.failures = 0
            key.backoff = 0.0
            if lease.probe:  # only a probe proves a disabled key works again, not a request leased before the 401
                key.disabled = False
        elif outcome is Outcome.RATE_LIMITED:
            if retry_after is None:
                key.backoff = min(BACKOFF_CAP, key.backoff * 2 if key.backoff else BACKOFF_START)
                retry_after = key.backoff
            key.cool(lease.model, now + retry_after)
        elif outcome is Outcome.AUTH_FAILED:
            key.disabled = True
            key.probe_at = now + self.probe_interval
        elif outcome in (Outcome.SERVER_ERROR, Outcome.TIMEOUT):
            key.failures += 1
            if key.failures >= self.failure_threshold:
                key.cool(lease.model, now + self.failure_penalty)
                key.failures = 0
        if error is not None and outcome is not Outcome.SUCCESS:
            key.last_error = error

    def usable(self, now: float) -> bool:
        """Whether any key is neither disabled nor cooling (for readiness)."""
        return any(not k.disabled and k.cooldown_until <= now for k in self.keys)
