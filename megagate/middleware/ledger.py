"""LedgerMiddleware: one `UsageRow` per request that spends, handed to the usage ledger as the request ends.

It reads the request state (who, which model, what was tried, the usage and cost the answer's relay counted) and
the response observer (status, first byte); `ledger.record` only queues the row (`ledger.writer`), so the request
never waits for the database. Token counts (`count_tokens`) spend nothing and are not recorded; nor is anything a
request that never reached a model route. Usable alone: give it any object with `record(row)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send, header, observe_response
from megagate.ledger import UsageRow
from megagate.state import RequestState, get_client, get_state, route_of


class Recorder(Protocol):
    def record(self, row: UsageRow) -> None: ...


class LedgerMiddleware:
    def __init__(
        self, app: ASGIApp, *, ledger: Recorder, clock: Clock = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.clock = clock
        self.wall = wall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        observer, send = observe_response(scope, send, self.clock)
        try:
            await self.app(scope, receive, send)
        finally:
            state = get_state(scope)
            if state is not None and state.endpoint.operation != "count_tokens":
                self.ledger.record(self._row(scope, state, observer.status, started, observer.first_byte))

    def _row(
        self, scope: Scope, state: RequestState, status: int, started: float, first_byte: float | None
    ) -> UsageRow:
        client = get_client(scope)
        last = state.attempts[-1] if state.attempts else None
        usage = state.usage
        outcome = "failed_after_start" if state.stream_failure else last.outcome_name if last else "not_attempted"
        return UsageRow(
            time=self.wall(),
            request_id=(header(scope, b"x-request-id") or b"").decode(),
            client=client.name if client is not None else None,
            route=route_of(scope).path,
            requested_model=state.requested_model,
            served_model=state.served_model,
            upstream=last.upstream if last else None,
            key_id=last.key_id if last else None,
            attempts=len(state.attempts),
            status=status,
            outcome=outcome,
            stream=state.request.stream,
            input_tokens=usage.input if usage else 0,
            cache_read_tokens=usage.cache_read if usage else 0,
            cache_write_tokens=usage.cache_write if usage else 0,
            output_tokens=usage.output if usage else 0,
            reasoning_tokens=usage.reasoning if usage else 0,
            cost_usd=state.cost,
            ttft_ms=round((first_byte - started) * 1000, 2) if first_byte is not None else None,
            duration_ms=round((self.clock() - started) * 1000, 2),
        )
