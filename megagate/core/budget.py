"""Budgets in USD per UTC day and month, per client and per model (across clients), held by reservation.

At admission a request reserves its worst case (the estimated input at the dearer input price, plus `max_tokens`
at the output price) on every budget it falls under, atomically: refused when a budget is spent (`spent >= limit`:
LiteLLM #28020 compared with `>`) or when spent + reserved + this request would pass it. At the end the
reservation is settled with the real cost. So concurrent requests cannot overrun a budget by more than what the
requests in flight at the crossing were allowed to reserve (LiteLLM's after-the-fact recording overran: #34732).

Pure: time is passed in (Unix seconds), and `BudgetBook` is the in-process store; `pool.budget_store` keeps the
same book in Redis, in Lua, for several workers and replicas.
"""

from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

PERIODS = ("daily", "monthly")


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    daily: float | None = None
    monthly: float | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One budget a request falls under in one period: `client:team-a` or `model:claude-opus-*`, daily or monthly."""

    scope: str
    period: str  # "daily" | "monthly"
    limit: float

    def key(self, now: float) -> str:
        """The book's key for the period `now` falls in: the scope and the UTC day or month."""
        return f"{self.scope}:{period_of(self.period, now)}"

    def describe(self) -> str:
        kind, _, name = self.scope.partition(":")
        return f"the {self.period} budget of {kind} '{name}' (${self.limit:g})"


def period_of(period: str, now: float) -> str:
    """The UTC day (`2026-12-07`) or month (`2026-12`) of `now`; the last second's answer remembered (formatting
    a date costs microseconds, and every budgeted request asks twice)."""
    second = int(now)
    if _last[0] != second:
        moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
        _last[:] = [second, moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")]
    return str(_last[1] if period == "daily" else _last[2])


_last: list[object] = [None, "", ""]  # (second, day, month)


def resets_in(period: str, now: float) -> float:
    """Seconds until the period's budget starts again (UTC midnight, or the first of next month)."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = day + datetime.timedelta(days=1)
    else:
        start = (day.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
    return max(1.0, (start - moment).total_seconds())


def lines_for(client: str | None, client_budget: Budget | None, model_budget: tuple[str, Budget] | None) -> list[Line]:
    """The budget lines a request of `client` falls under; its model's budget given as (glob, budget)."""
    budgets: list[tuple[str, Budget]] = []
    if client is not None and client_budget is not None:
        budgets.append((f"client:{client}", client_budget))
    if model_budget is not None:
        budgets.append((f"model:{model_budget[0]}", model_budget[1]))
    return [Line(scope, period, float(limit)) for scope, budget in budgets for period in PERIODS
            if (limit := getattr(budget, period)) is not None]  # fmt: skip


@dataclass(slots=True)
class Refusal:
    line: Line
    spent: float
    retry_after: float

    @property
    def message(self) -> str:
        return (f"Over {self.line.describe()}: ${self.spent:.4f} spent. It resets in {self.retry_after:.0f} s "
                f"(UTC {'midnight' if self.line.period == 'daily' else 'month start'}).")  # fmt: skip


@dataclass(slots=True)
class Account:
    spent: float = 0.0
    reserved: dict[str, float] = field(default_factory=dict)  # reservation id -> amount

    @property
    def held(self) -> float:
        return self.spent + sum(self.reserved.values())


class BudgetBook:
    """Spend and reservations per budget key, in this process. `seed` takes what the ledger says was spent."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}

    def reserve(self, lines: Iterable[Line], amount: float, reservation: str, now: float) -> Refusal | list[str]:
        """Reserve `amount` on every line and return the keys it holds (to settle), or none and say which refused."""
        lines = list(lines)
        keys = [line.key(now) for line in lines]
        for line, key in zip(lines, keys, strict=True):
            account = self.accounts.get(key)
            if account is not None and (account.spent >= line.limit or account.held + amount > line.limit):
                return Refusal(line, account.spent, resets_in(line.period, now))
            if account is None and amount > line.limit:
                return Refusal(line, 0.0, resets_in(line.period, now))
        for key in keys:
            if key not in self.accounts:
                self._forget_past(key)
            self.accounts.setdefault(key, Account()).reserved[reservation] = amount
        return keys

    def settle(self, keys: Iterable[str], reservation: str, cost: float) -> None:
        """Replace the reservation with what the request really cost, in the periods it was admitted in."""
        for key in keys:
            account = self.accounts.get(key)
            if account is not None and account.reserved.pop(reservation, None) is not None:
                account.spent += cost

    def spent(self, key: str) -> float:
        account = self.accounts.get(key)
        return account.spent if account is not None else 0.0

    def seed(self, key: str, spent: float) -> None:
        self.accounts.setdefault(key, Account()).spent += spent

    def _forget_past(self, key: str) -> None:
        """A new period of a budget begins: its earlier periods with nothing in flight are done."""
        scope, _, period = key.rpartition(":")
        for old in [k for k, a in self.accounts.items() if k.rpartition(":")[0] == scope and not a.reserved
                    and len(k.rpartition(":")[2]) == len(period) and k.rpartition(":")[2] < period]:  # fmt: skip
            del self.accounts[old]


def seed_from_rows(
    book: BudgetBook,
    rows: Iterable[dict[str, object]],
    client_budgets: dict[str, Budget],
    model_budgets: list[tuple[str, Budget]],
    now: float,
) -> None:
    """Put what the ledger's daily rollups (`day`, `client`, `model`, `cost_usd`) say was spent this month into
    `book`, so that the in-process budgets survive a restart."""
    today, month = period_of("daily", now), period_of("monthly", now)
    for row in rows:
        day, cost = str(row["day"]), float(row["cost_usd"] or 0.0)  # type: ignore[arg-type]
        if not day.startswith(month) or not cost:
            continue
        scopes = []
        if (client := str(row["client"] or "")) in client_budgets:
            scopes.append(f"client:{client}")
        glob = next((g for g, _ in model_budgets if fnmatch.fnmatchcase(str(row["model"]), g)), None)
        if glob is not None:
            scopes.append(f"model:{glob}")
        for scope in scopes:
            book.seed(f"{scope}:{month}", cost)
            if day == today:
                book.seed(f"{scope}:{today}", cost)


def crossed(thresholds: Iterable[float], before: float, after: float, limit: float) -> list[float]:
    """The thresholds (fractions of `limit`) that spend crossed going from `before` to `after`."""
    return [t for t in thresholds if before < t * limit <= after] if limit > 0 else []


def alert_payload(line: Line, period_key: str, threshold: float, spent: float, now: float) -> dict[str, object]:
    """What `[alerts] webhook` is posted when a budget crosses a threshold."""
    kind, _, name = line.scope.partition(":")
    return {
        "type": "budget_threshold",
        "budget": {"kind": kind, "name": name, "period": line.period, "limit_usd": line.limit},
        "period": period_key,
        "threshold": threshold,
        "spent_usd": round(spent, 6),
        "time": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
    }
