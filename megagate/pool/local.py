"""`LocalKeyPool`: the KeyPool held in this process, the pure `core.scheduler.KeyScheduler` with a clock and waiting."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import anyio

from megagate.asgi import Clock
from megagate.config import KeyConfig, Rotation
from megagate.core.errors import NoKeyAvailable, NoUsableKey
from megagate.core.outcome import Outcome
from megagate.core.scheduler import KeyLimits, KeyScheduler, Lease
from megagate.core.secrets import key_id, mask_key
from megagate.pool import AFFINITY_SESSIONS, RETRY_AFTER_UNKNOWN, KeyLease, KeyReport


class LocalKeyPool:
    """A KeyPool held in this process: one `KeyScheduler`, the clock, and waiters woken by each release."""

    def __init__(
        self,
        upstream: str,
        keys: Sequence[KeyConfig],
        rotation: Rotation | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        rotation = rotation or Rotation()
        self.upstream = upstream
        self._keys = [k.key for k in keys]
        self._ids = [key_id(k) for k in self._keys]
        self._index = {id_: i for i, id_ in enumerate(self._ids)}
        limits = [
            KeyLimits.for_tier(k.tier, rpm=k.rpm, tpm=k.tpm, max_concurrency=k.max_concurrency, weight=k.weight)
            for k in keys
        ]
        self.scheduler = KeyScheduler(
            self._ids,
            limits,
            strategy=rotation.strategy,
            probe_interval=rotation.probe_interval,
            failure_threshold=rotation.failure_threshold,
            failure_penalty=rotation.failure_penalty,
        )
        self._clock = clock
        self._waiters: set[anyio.Event] = set()
        self._affinity: OrderedDict[str, int] = OrderedDict()  # session -> key index, the most recent last

    def _remember(self, session: str, index: int) -> None:
        self._affinity[session] = index
        self._affinity.move_to_end(session)
        if len(self._affinity) > AFFINITY_SESSIONS:
            self._affinity.popitem(last=False)

    async def acquire(
        self,
        tokens: int,
        *,
        model: str | None = None,
        exclude: frozenset[str] = frozenset(),
        max_wait: float = 0.0,
        session: str | None = None,
    ) -> KeyLease:
        excluded = frozenset(self._index[i] for i in exclude if i in self._index)
        if len(excluded) == len(self._keys):
            raise NoKeyAvailable(f"Every key of upstream '{self.upstream}' was already tried for this request.")
        deadline = self._clock() + max_wait
        while True:
            now = self._clock()
            prefer = self._affinity.get(session) if session is not None else None
            answer = self.scheduler.acquire(tokens, now, excluded, model, prefer)
            if isinstance(answer, Lease):
                if session is not None:
                    self._remember(session, answer.index)
                return KeyLease(self._keys[answer.index], answer.key_id, mask_key(self._keys[answer.index]), answer)
            remaining = deadline - now
            if answer.refused:
                retry_after = answer.seconds if answer.seconds is not None else RETRY_AFTER_UNKNOWN
                raise NoUsableKey(
                    f"no usable upstream key: refused by the upstream (every key of '{self.upstream}' got 401/403); "
                    f"the next probe is in {retry_after:.0f} s.",
                    retry_after=retry_after,
                )
            # Give up at once only when nothing within the bound can help: no key ready in time and none held back
            # by concurrency alone (a release could free that one any moment).
            too_far = answer.seconds is not None and answer.seconds > remaining and not answer.release_helps
            if remaining <= 0 or too_far:
                retry_after = answer.seconds if answer.seconds is not None else RETRY_AFTER_UNKNOWN
                raise NoKeyAvailable(
                    f"All keys of upstream '{self.upstream}' are at their rate limits, cooling down or disabled; "
                    f"retry in {retry_after:.1f} s.",
                    retry_after=retry_after,
                )
            # Sleep until the earliest key is ready, or until any release (a freed concurrency slot), whichever first.
            released = anyio.Event()
            self._waiters.add(released)
            try:
                with anyio.move_on_after(min(answer.seconds, remaining) if answer.seconds is not None else remaining):
                    await released.wait()
            finally:
                self._waiters.discard(released)

    async def release(
        self,
        lease: KeyLease,
        outcome: Outcome,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
        error: str | None = None,
    ) -> None:
        assert isinstance(lease.handle, Lease)
        self.scheduler.release(
            lease.handle, outcome, self._clock(), tokens_used=tokens_used, retry_after=retry_after, error=error
        )
        for waiter in self._waiters:
            waiter.set()

    async def report(self) -> list[KeyReport]:
        now = self._clock()
        reports = []
        for key, state in zip(self._keys, self.scheduler.keys, strict=True):
            state.window.prune(now)
            cooling = state.cooldown_until - now
            reports.append(
                KeyReport(
                    id=state.id,
                    mask=mask_key(key),
                    upstream=self.upstream,
                    state="disabled" if state.disabled else "cooling" if cooling > 0 else "active",
                    cooling_for=round(cooling, 3) if cooling > 0 else None,
                    cooling_models={m: round(t - now, 3) for m, t in state.model_cooldowns.items() if t > now},
                    in_flight=state.in_flight,
                    requests_last_minute=len(state.window.requests),
                    tokens_last_minute=int(state.window.token_sum),
                    rpm=state.limits.rpm,
                    tpm=state.limits.tpm,
                    max_concurrency=state.limits.max_concurrency,
                    last_error=state.last_error,
                )
            )
        return reports

    def usable(self) -> bool:
        return self.scheduler.usable(self._clock())

    def adopt(self, previous: LocalKeyPool) -> None:
        """Take over from the pool a reload replaces: each key that stays keeps its state object (windows,
        in-flight count, cooldowns), which the old pool's leases still running release into; removed keys stay
        with the old pool only, forgotten when its last lease ends; new keys start fresh."""
        kept = {state.id: state for state in previous.scheduler.keys}
        for index, state in enumerate(self.scheduler.keys):
            old = kept.get(state.id)
            if old is not None:
                old.limits = state.limits
                old.window.rpm, old.window.tpm = state.limits.rpm, state.limits.tpm
                self.scheduler.keys[index] = old
        self._affinity = previous._affinity
