"""Budgets by reservation, time passed in: a request is refused once a budget is spent or when its worst case
would pass it; concurrent reservations never let the spend overrun by more than what was reserved."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megagate.core.budget import Budget, BudgetBook, Line, Refusal, lines_for, period_of, resets_in, seed_from_rows

NOON = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC).timestamp()


def test_lines_keys_and_resets() -> None:
    lines = lines_for("team-a", Budget(daily=5.0, monthly=100.0), ("claude-opus-*", Budget(daily=50.0)))
    assert [(line.scope, line.period, line.limit) for line in lines] == [
        ("client:team-a", "daily", 5.0),
        ("client:team-a", "monthly", 100.0),
        ("model:claude-opus-*", "daily", 50.0),
    ]
    assert lines[0].key(NOON) == "client:team-a:2026-12-07" and lines[1].key(NOON) == "client:team-a:2026-12"
    assert resets_in("daily", NOON) == 12 * 3600
    assert resets_in("monthly", NOON) == (24 * 24 + 12) * 3600  # to 2027-01-01
    assert lines_for(None, Budget(daily=1.0), None) == []  # an anonymous request has no client budget
    assert period_of("monthly", datetime.datetime(2026, 12, 31, 23, 59, tzinfo=datetime.UTC).timestamp()) == "2026-12"


def test_a_spent_budget_refuses_and_a_settled_one_counts_the_real_cost() -> None:
    book, line = BudgetBook(), Line("client:a", "daily", 1.0)
    keys = book.reserve([line], 0.6, "r1", NOON)
    assert keys == ["client:a:2026-12-07"]
    refused = book.reserve([line], 0.6, "r2", NOON)  # 0.6 held + 0.6 > 1.0
    assert isinstance(refused, Refusal) and "daily budget of client 'a'" in refused.message
    book.settle(keys, "r1", 0.2)  # it cost less than its worst case
    assert book.spent("client:a:2026-12-07") == pytest.approx(0.2)
    assert not isinstance(book.reserve([line], 0.6, "r3", NOON), Refusal)
    book.seed("client:a:2026-12-07", 1.0)
    assert isinstance(book.reserve([line], 0.0, "r4", NOON), Refusal)  # spent >= limit: refused even for $0
    assert not isinstance(book.reserve([line], 0.1, "r5", NOON + 86400), Refusal)  # the next day starts afresh


def test_one_line_refusing_holds_nothing_on_the_others() -> None:
    book = BudgetBook()
    wide, narrow = Line("client:a", "monthly", 100.0), Line("model:m", "daily", 0.5)
    assert isinstance(book.reserve([wide, narrow], 1.0, "r1", NOON), Refusal)
    assert book.accounts == {}


@given(st.lists(st.tuples(st.floats(0.0, 0.3), st.floats(0.0, 1.0)), max_size=60))
def test_concurrent_requests_never_overrun_by_more_than_was_reserved(requests: list[tuple[float, float]]) -> None:
    """All admitted at once (worst case each), then settled at a fraction of it: the spend stays within the limit."""
    book, line, limit = BudgetBook(), Line("client:a", "daily", 2.0), 2.0
    admitted = []
    for n, (worst, fraction) in enumerate(requests):
        held = book.reserve([line], worst, f"r{n}", NOON)
        if not isinstance(held, Refusal):
            admitted.append((held, f"r{n}", worst * fraction))
    assert sum(sum(a.reserved.values()) for a in book.accounts.values()) <= limit + 1e-9
    for keys, reservation, cost in admitted:
        book.settle(keys, reservation, cost)
    assert book.spent(line.key(NOON)) <= limit + 1e-9


def test_the_ledgers_rollups_seed_this_months_spend() -> None:
    rows = [{"day": "2026-12-07", "client": "team-a", "model": "claude-opus-4", "cost_usd": 2.0},
            {"day": "2026-12-01", "client": "team-a", "model": "gpt-4", "cost_usd": 3.0},
            {"day": "2026-11-30", "client": "team-a", "model": "gpt-4", "cost_usd": 99.0}]  # fmt: skip
    book = BudgetBook()
    seed_from_rows(book, rows, {"team-a": Budget(daily=5.0)}, [("claude-opus-*", Budget(daily=1.0))], NOON)
    assert book.spent("client:team-a:2026-12-07") == 2.0 and book.spent("client:team-a:2026-12") == 5.0
    assert book.spent("model:claude-opus-*:2026-12-07") == 2.0
