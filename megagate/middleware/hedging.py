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
class _Racer:
    """One of the two copies of the request in the race: its own scope and state, so neither sees the other's."""

    scope: Scope
    state: RequestState
    cancel_scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    settled: anyio.Event = dataclasses.field(default_factory=anyio.Event)  # it sent something, or it ended
    error: Exception | None = None


def _fork(scope: Scope, state: RequestState) -> _Racer:
    request = dataclasses.replace(state.request, fields=dict(state.request.fields))
    forked_state = dataclasses.replace(state, request=request, attempts=[])
    forked_scope = dict(scope)
    forked_scope["state"] = dict(scope.get("state") or {})
    set_state(forked_scope, forked_state)
    return _Racer(forked_scope, forked_state)


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
        racers: list[_Racer] = []
        winner: _Racer | None = None

        async def receive_disconnect() -> Message:
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def run(racer: _Racer) -> None:
            async def send_if_first(message: Message) -> None:
                nonlocal winner
                if winner is None:
                    winner = racer
                    for other in racers:
                        if other is not racer:
                            other.cancel_scope.cancel()
                    racer.settled.set()
                    _record_attempts(state, racers, racer)  # before the first message: headers report them
                    _adopt(state, racer)
                if winner is not racer:
                    await anyio.sleep_forever()  # lost the race; cancelled right away
                await send(message)

            with racer.cancel_scope:
                try:
                    body = replay_body(racer.state.request.encode(), receive_disconnect)
                    await self.app(racer.scope, body, send_if_first)
                except Exception as error:  # noqa: BLE001 -- kept, and raised below unless the other racer wins
                    racer.error = error
            racer.settled.set()

        async with anyio.create_task_group() as watcher:
            watcher.start_soon(_watch_disconnect, receive, disconnected)
            async with anyio.create_task_group() as race:
                racers.append(_fork(scope, state))
                race.start_soon(run, racers[0])
                with anyio.move_on_after(self.policy.delay):
                    await racers[0].settled.wait()
                if not racers[0].settled.is_set():
                    racers.append(_fork(scope, state))
                    race.start_soon(run, racers[1])
            watcher.cancel_scope.cancel()
        chosen = winner or racers[-1]
        if winner is None:
            _record_attempts(state, racers, chosen)
        _adopt(state, chosen)  # again: a stream's usage arrives after its first event
        if chosen.error is not None:
            raise chosen.error


def _adopt(state: RequestState, chosen: _Racer) -> None:
    """The chosen racer's decisions become the request's: every field but the attempt list, so that a field added
    to RequestState is never lost under hedging."""
    for name in _ADOPTED:
        setattr(state, name, getattr(chosen.state, name))


def _record_attempts(state: RequestState, racers: list[_Racer], chosen: _Racer) -> None:
    """Append what every racer tried, the chosen one's last (its attempt is the one that served)."""
    for racer in [*(r for r in racers if r is not chosen), chosen]:
        state.attempts.extend(racer.state.attempts)


_ADOPTED = tuple(f.name for f in dataclasses.fields(RequestState) if f.name != "attempts")


async def _watch_disconnect(receive: Receive, disconnected: anyio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
