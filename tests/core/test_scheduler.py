"""The key scheduler: limits are never exceeded, cooling and disabled keys are never chosen, slots always return.

Time is passed in by hand; hypothesis drives random request/outcome sequences through a state machine.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from megagate.core.outcome import Outcome
from megagate.core.scheduler import WINDOW, KeyLimits, KeyScheduler, Lease, Wait

limits_strategy = st.builds(
    KeyLimits,
    rpm=st.none() | st.integers(1, 5),
    tpm=st.none() | st.integers(50, 400),
    max_concurrency=st.none() | st.integers(1, 3),
    weight=st.sampled_from([1.0, 2.0, 3.0]),
)


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        limits=st.lists(limits_strategy, min_size=1, max_size=4),
        strategy=st.sampled_from(["round_robin", "least_busy", "weighted"]),
    )
    def start(self, limits: list[KeyLimits], strategy: str) -> None:
        self.scheduler = KeyScheduler([f"k{i}" for i in range(len(limits))], limits, strategy=strategy)  # type: ignore[arg-type]
        self.now = 0.0
        self.leases: list[Lease] = []
        self.log: list[list[tuple[float, list[float]]]] = [[] for _ in limits]  # per key: (time, [tokens])
        self.unavailable_until = [0.0] * len(limits)  # cooling until, or +inf while disabled

    @rule(seconds=st.floats(0, 30))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(tokens=st.integers(1, 120))
    def acquire(self, tokens: int) -> None:
        lease = self.scheduler.acquire(tokens, self.now)
        if isinstance(lease, Wait):
            assert lease.seconds is None or lease.seconds > 0
            return
        i = lease.index
        key = self.scheduler.keys[i]
        assert self.unavailable_until[i] <= self.now or lease.probe, "a cooling or disabled key was chosen"
        self.log[i].append((self.now, lease.entry))
        window = [(t, e) for t, e in self.log[i] if t > self.now - WINDOW]
        limits = key.limits
        if limits.rpm is not None:
            assert len(window) <= limits.rpm
        if limits.tpm is not None and len(window) > 1:
            assert sum(e[1] for _, e in window) <= limits.tpm
        if limits.max_concurrency is not None:
            assert key.in_flight <= limits.max_concurrency
        self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(list(Outcome)),
        used=st.none() | st.integers(0, 60),
        retry_after=st.none() | st.floats(0.5, 10),
    )
    def release(self, data: st.DataObject, outcome: Outcome, used: int | None, retry_after: float | None) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self.scheduler.release(lease, outcome, self.now, tokens_used=used, retry_after=retry_after)
        key = self.scheduler.keys[lease.index]
        if outcome is Outcome.SUCCESS and lease.probe:
            self.unavailable_until[lease.index] = 0.0
        if key.disabled:
            self.unavailable_until[lease.index] = key.probe_at
        elif key.cooldown_until > self.now:
            self.unavailable_until[lease.index] = key.cooldown_until

    @invariant()
    def in_flight_matches_outstanding_leases(self) -> None:
        if not hasattr(self, "scheduler"):
            return
        outstanding = Counter(lease.index for lease in self.leases)
        assert [k.in_flight for k in self.scheduler.keys] == [outstanding[i] for i in range(len(self.scheduler.keys))]

    def teardown(self) -> None:
        if hasattr(self, "scheduler"):
            for lease in self.leases:
                self.scheduler.release(lease, Outcome.CANCELLED, self.now)
            assert all(k.in_flight == 0 for k in self.scheduler.keys)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


@given(keys=st.integers(1, 8), requests=st.integers(0, 200))
def test_round_robin_spreads_evenly(keys: int, requests: int) -> None:
    scheduler = KeyScheduler([f"k{i}" for i in range(keys)])
    counts = Counter()
    for n in range(requests):
        lease = scheduler.acquire(10, float(n))
        assert isinstance(lease, Lease)
        counts[lease.index] += 1
        scheduler.release(lease, Outcome.SUCCESS, float(n))
    for i in range(keys):
        assert abs(counts[i] - requests / keys) <= 1


def test_cooled_down_key_is_skipped_until_cooldown_ends() -> None:
    s = KeyScheduler(["k1", "k2"])
    s.release(s.acquire(1, 0.0), Outcome.RATE_LIMITED, 1.0, retry_after=30.0)  # type: ignore[arg-type]
    assert [s.acquire(1, 2.0).index for _ in range(3)] == [1, 1, 1]  # type: ignore[union-attr]
    assert {s.acquire(1, 31.5).index for _ in range(2)} == {0, 1}  # type: ignore[union-attr]


def test_backoff_without_retry_after_doubles_and_caps() -> None:
    s = KeyScheduler(["k"])
    expected = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    now = 0.0
    for wait in expected:
        lease = s.acquire(1, now)
        assert isinstance(lease, Lease)
        s.release(lease, Outcome.RATE_LIMITED, now)
        assert s.acquire(1, now) == Wait(pytest.approx(wait))
        now += wait


def test_auth_failure_disables_until_a_successful_probe() -> None:
    s = KeyScheduler(["k"], probe_interval=600)
    s.release(s.acquire(1, 0.0), Outcome.AUTH_FAILED, 0.0)  # type: ignore[arg-type]
    assert isinstance(s.acquire(1, 599.0), Wait)
    probe = s.acquire(1, 600.0)
    assert isinstance(probe, Lease) and probe.probe
    assert isinstance(s.acquire(1, 600.0), Wait)  # one probe at a time
    s.release(probe, Outcome.SUCCESS, 601.0)
    assert isinstance(s.acquire(1, 601.0), Lease)


def test_rpm_wait_says_when_the_window_frees() -> None:
    s = KeyScheduler(["k"], [KeyLimits(rpm=2)])
    for t in (0.0, 10.0):
        s.release(s.acquire(1, t), Outcome.SUCCESS, t)  # type: ignore[arg-type]
    assert s.acquire(1, 20.0) == Wait(pytest.approx(40.0))
    assert isinstance(s.acquire(1, 60.5), Lease)


def test_concurrency_limit_waits_for_a_release() -> None:
    s = KeyScheduler(["k"], [KeyLimits.for_tier("basic")])
    leases = [s.acquire(1, 0.0) for _ in range(10)]
    assert s.acquire(1, 0.0) == Wait(None, release_helps=True)
    s.release(leases[0], Outcome.SUCCESS, 0.1)  # type: ignore[arg-type]
    assert isinstance(s.acquire(1, 0.1), Lease)


def test_real_usage_corrects_the_token_estimate() -> None:
    s = KeyScheduler(["k"], [KeyLimits(tpm=100)])
    lease = s.acquire(90, 0.0)
    s.release(lease, Outcome.SUCCESS, 1.0, tokens_used=10)  # type: ignore[arg-type]
    assert isinstance(s.acquire(80, 1.0), Lease)


def test_repeated_server_errors_earn_a_penalty() -> None:
    s = KeyScheduler(["k"], failure_threshold=3, failure_penalty=5.0)
    for _ in range(3):
        s.release(s.acquire(1, 0.0), Outcome.SERVER_ERROR, 0.0)  # type: ignore[arg-type]
    assert s.acquire(1, 1.0) == Wait(pytest.approx(4.0))


def test_a_rate_limit_for_one_model_cools_the_key_for_that_model_only() -> None:
    scheduler = KeyScheduler(["a"])
    lease = scheduler.acquire(10, 0.0, model="m1")
    assert isinstance(lease, Lease)
    scheduler.release(lease, Outcome.RATE_LIMITED, 0.0, retry_after=5)
    assert scheduler.acquire(10, 1.0, model="m1") == Wait(4.0)
    other = scheduler.acquire(10, 1.0, model="m2")
    assert isinstance(other, Lease)
    scheduler.release(other, Outcome.SUCCESS, 1.0)
    again = scheduler.acquire(10, 5.0, model="m1")
    assert isinstance(again, Lease) and not scheduler.keys[0].model_cooldowns  # expired entries are dropped
