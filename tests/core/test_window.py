"""The sliding window the key scheduler and the client limits share: time passed in, no sleeps."""

from __future__ import annotations

from megagate.core.window import WINDOW, SlidingWindow


def test_rpm_frees_a_slot_when_the_oldest_request_leaves_the_window() -> None:
    window = SlidingWindow(rpm=2)
    window.record(1, 0.0)
    window.record(1, 10.0)
    window.prune(20.0)
    assert window.ready_at(1, 20.0) == WINDOW  # the request at 0 leaves at 60
    window.prune(WINDOW + 0.5)
    assert window.ready_at(1, WINDOW + 0.5) == WINDOW + 0.5


def test_settling_real_usage_frees_tokens_the_estimate_reserved() -> None:
    window = SlidingWindow(tpm=1000)
    entry = window.record(900, 0.0)
    assert window.ready_at(200, 1.0) == WINDOW
    window.settle(entry, 100, 1.0)
    assert window.token_sum == 100 and window.ready_at(200, 1.0) == 1.0


def test_a_request_larger_than_the_budget_runs_alone_on_an_empty_window() -> None:
    window = SlidingWindow(tpm=100)
    assert window.ready_at(500, 0.0) == 0.0
    window.record(500, 0.0)
    assert window.ready_at(1, 1.0) == WINDOW
    assert window.headroom() < 0
