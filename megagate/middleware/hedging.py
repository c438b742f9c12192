"""HedgingMiddleware: when an attempt has sent no first byte after `delay`, race a second one; first to answer wins.

It sits between FallbackMiddleware and RotationMiddleware, so the backup attempt leases the pool's next key (and a
failure of both still falls back to the next model). Each attempt runs on its own copy of the request state and
scope; the first to send anything (for a stream: its first event) is relayed, the other is cancelled, which closes
its upstream connection and returns its key. Off unless configured: it can double upstream spend on slow requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import anyio

from megagate.asgi import ASGIApp, Message, Receive, Scope, Send, replay_body
from megagate.config import Hedging
from megagate.state import RequestState, get_state, set_state


@dataclasses.dataclass(eq=False)
class _Attempt:
    scope: Scope
    state: RequestState
    cancel_scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    settled: anyio.Event = dataclasses.field(default_factory=anyio.Event)  # it sent something, or it ended
    error: Exception | None = None


def _fork(scope: Scope, state: RequestState) -> _Attempt:
    request = dataclasses.replace(state.request, fields=dict(state.request.fields))
    forked_state = dataclasses.replace(state, request=request, attempts=0, tried=[], outcomes=[])
    forked_scope = dict(scope)
    forked_scope["state"] = dict(scope.get("state") or {})
    set_state(forked_scope, forked_state)
    return _Attempt(forked_scope, forked_state)


class HedgingMiddleware:
    def __init__(self, app: ASGIApp, *, delay: float, models: Sequence[str] = ("*",)) -> None:
        self.app = app
        self.policy = Hedging(delay=delay, models=list(models))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope) if scope["type"] == "http" else None
        if state is None or not self.policy.applies_to(state.request.model):
            await self.app(scope, receive, send)
            return
        disconnected = anyio.Event()
        attempts: list[_Attempt] = []
        winner: _Attempt | None = None

        async def receive_disconnect() -> Message:
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def run(attempt: _Attempt) -> None:
            async def send_if_first(message: Message) -> None:
                nonlocal winner
                if winner is None:
                    winner = attempt
                    for other in attempts:
                        if other is not attempt:
                            other.cancel_scope.cancel()
                    attempt.settled.set()
                    _count(state, attempts)  # before the first message: outer layers report it in headers
                    _merge(state, attempt)
                if winner is not attempt:
                    await anyio.sleep_forever()  # lost the race; cancelled right away
                await send(message)

            with attempt.cancel_scope:
                try:
                    body = replay_body(attempt.state.request.encode(), receive_disconnect)
                    await self.app(attempt.scope, body, send_if_first)
                except Exception as error:  # noqa: BLE001 -- kept, and raised below unless the other attempt wins
                    attempt.error = error
            attempt.settled.set()

        async with anyio.create_task_group() as watcher:
            watcher.start_soon(_watch_disconnect, receive, disconnected)
            async with anyio.create_task_group() as racers:
                attempts.append(_fork(scope, state))
                racers.start_soon(run, attempts[0])
                with anyio.move_on_after(self.policy.delay):
                    await attempts[0].settled.wait()
                if not attempts[0].settled.is_set():
                    attempts.append(_fork(scope, state))
                    racers.start_soon(run, attempts[1])
            watcher.cancel_scope.cancel()
        if winner is None:
            _count(state, attempts)
        chosen = winner or attempts[-1]
        _merge(state, chosen)
        if chosen.error is not None:
            raise chosen.error


def _merge(state: RequestState, chosen: _Attempt) -> None:
    """Tell the outer layers what the chosen attempt learned (model served, usage, key)."""
    state.request = chosen.state.request
    state.served_model = chosen.state.served_model
    state.usage = chosen.state.usage
    state.key_id = chosen.state.key_id
    state.target = chosen.state.target
    state.response_started = chosen.state.response_started


def _count(state: RequestState, attempts: list[_Attempt]) -> None:
    state.attempts += sum(a.state.attempts for a in attempts)
    for attempt in attempts:
        state.tried.extend(attempt.state.tried)
        state.outcomes.extend(attempt.state.outcomes)


async def _watch_disconnect(receive: Receive, disconnected: anyio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
