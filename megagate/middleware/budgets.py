"""BudgetMiddleware: spending limits per client and per model, held before the request is forwarded.

It runs inside ClientLimitsMiddleware (the client is known, the request parsed) and outside fallback: a request
reserves its worst-case cost (`core.budget`) on every budget it falls under; over one, it gets 429
`budget_exceeded` in its route's envelope with a Retry-After until the budget resets, or, when the client says
`on_budget = "<model>"`, it is served by that cheaper model instead (`x-megagate-budget: fallback`). When the
request ends, the reservation is settled with what the answer really cost (`state.cost`). An unpriced model cannot
be held to a budget (its cost is unknown): it passes, and the metrics count it as unpriced. Token counts spend
nothing and are not held.
"""

from __future__ import annotations

import fnmatch
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from megagate.asgi import ASGIApp, Headers, Receive, Scope, Send, observe_response
from megagate.core.budget import Budget, Line, Refusal, alert_payload, crossed, lines_for
from megagate.core.errors import BudgetExceeded
from megagate.core.pricing import PriceTable
from megagate.state import RequestState, get_client, get_state

BUDGET_HEADER = b"x-megagate-budget"


class Budgets(Protocol):
    async def reserve(
        self, lines: Sequence[Line], amount: float, reservation: str, now: float
    ) -> Refusal | list[str]: ...

    async def settle(self, keys: Sequence[str], reservation: str, cost: float) -> list[float]:
        """Must complete even when the request is being cancelled (the reservation would stay held)."""
        ...

    async def first_crossing(self, key: str, period: str, threshold: float) -> bool: ...


class Alerts(Protocol):
    def offer(self, alert: dict[str, object]) -> None: ...


class BudgetMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        budgets: Budgets,
        prices: PriceTable,
        model_budgets: Mapping[str, Budget] | None = None,
        default_max_tokens: int = 1024,
        alerts: Alerts | None = None,
        thresholds: Sequence[float] = (),
        on_spent: Callable[[Line, float], None] = lambda line, spent: None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.alerts = alerts  # where threshold crossings go ([alerts] webhook), None: nowhere
        self.thresholds = sorted(thresholds)
        self.on_spent = on_spent  # each budget's spend after a settlement (the metrics' budget remaining)
        self.budgets = budgets
        self.prices = prices
        self.model_budgets = list((model_budgets or {}).items())
        self._budget_of: dict[str, tuple[str, Budget] | None] = {}
        self.default_max_tokens = default_max_tokens
        self.wall = wall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope) if scope["type"] == "http" else None
        if state is None or state.endpoint.operation == "count_tokens":
            await self.app(scope, receive, send)
            return
        held = await self._hold(scope, state)
        if held is None:
            await self.app(scope, receive, send)
            return
        lines, keys, reservation, fallback = held
        try:
            if fallback:
                observer, send = observe_response(scope, send)
                with observer.adding_headers(_said_fallback):
                    await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:  # settled however the request ended (a store that waits on the network shields itself)
            cost = state.cost or 0.0
            spent = await self.budgets.settle(keys, reservation, cost)
            for line, after in zip(lines, spent, strict=False):
                self.on_spent(line, after)
            if self.alerts is not None and cost > 0:
                await self._alert(lines, keys, spent, cost)

    async def _alert(self, lines: list[Line], keys: list[str], spent: list[float], cost: float) -> None:
        for line, key, after in zip(lines, keys, spent, strict=False):
            for threshold in crossed(self.thresholds, after - cost, after, line.limit):
                if await self.budgets.first_crossing(key, line.period, threshold):
                    assert self.alerts is not None
                    self.alerts.offer(alert_payload(line, key.rpartition(":")[2], threshold, after, self.wall()))

    async def _hold(self, scope: Scope, state: RequestState) -> tuple[list[Line], list[str], str, bool] | None:
        """Reserve the request's worst case: (the keys held, the reservation, whether it fell back to a cheaper
        model), or None when no budget applies. Raises BudgetExceeded when over one."""
        client = get_client(scope)
        config = client.config if client is not None else None
        fallback = False
        while True:
            model = state.request.model
            lines = lines_for(config.name if config else None, config.budget if config else None,
                              self._model_budget(model))  # fmt: skip
            price = self.prices.price(model)
            if not lines or price is None:
                return None
            request = state.request
            amount = price.worst_case(request.prompt_tokens, request.max_tokens or self.default_max_tokens)
            reservation = secrets.token_hex(8)
            held = await self.budgets.reserve(lines, amount, reservation, self.wall())
            if not isinstance(held, Refusal):
                return lines, held, reservation, fallback
            cheaper = config.on_budget if config is not None else "reject"
            if cheaper == "reject" or fallback or cheaper == model:
                raise BudgetExceeded(held.message, retry_after=held.retry_after)
            state.request.set_model(cheaper)  # the budget's own fallback: served by the cheaper model
            fallback = True

    def _model_budget(self, model: str) -> tuple[str, Budget] | None:
        if model not in self._budget_of:
            if len(self._budget_of) > 4096:
                self._budget_of.clear()  # bounded: a client sending endless model names gets no memory from it
            self._budget_of[model] = next(
                ((g, b) for g, b in self.model_budgets if fnmatch.fnmatchcase(model, g)), None
            )
        return self._budget_of[model]


def _said_fallback(headers: Headers) -> Headers:
    return [*headers, (BUDGET_HEADER, b"fallback")]
