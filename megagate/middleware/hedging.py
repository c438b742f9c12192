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
    forked_state = dataclasses.replace(state, request=request, attempts=[])
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
                    _record_attempts(state, attempts, attempt)  # before the first message: headers report them
                    _adopt(state, attempt)
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
        chosen = winner or attempts[-1]
        if winner is None:
            _record_attempts(state, attempts, chosen)
        _adopt(state, chosen)  # again: a stream's usage arrives after its first event
        if chosen.error is not None:
            raise chosen.error


def _adopt(state: RequestState, chosen: _Attempt) -> None:
    """The chosen racer's decisions become the request's: every field but the attempt list, so that a field added
    to RequestState is never lost under hedging."""
    for name in _ADOPTED:
        setattr(state, name, getattr(chosen.state, name))


def _record_attempts(state: RequestState, racers: list[_Attempt], chosen: _Attempt) -> None:
    """Append what every racer tried, the chosen one's last (its attempt is the one that served)."""
    for racer in [*(r for r in racers if r is not chosen), chosen]:
        state.attempts.extend(racer.state.attempts)


_ADOPTED = tuple(f.name for f in dataclasses.fields(RequestState) if f.name != "attempts")


async def _watch_disconnect(receive: Receive, disconnected: anyio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
