"""HedgingMiddleware: a stalled first attempt is raced by a second; the first to answer wins, the loser is cancelled."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from megagate.core.errors import UpstreamStatus
from megagate.core.request import OPENAI_RULES, RequestDefaults, prepare_chat_request
from megagate.endpoints.relay import Relay
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.hedging import HedgingMiddleware
from megagate.routing import ENDPOINTS
from megagate.state import Attempt, RequestState, get_state, set_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio
DEFAULTS = RequestDefaults.from_values("m", {}, OPENAI_RULES)


class Attempts:
    """Attempt n behaves as `script[n]`: "stall", "answer", "slow" (answers once the backup has started: no
    wall-clock race) or an exception."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0
        self.cancelled: list[int] = []
        self.backup_started = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = get_state(scope)
        assert state is not None
        number = self.calls
        self.calls += 1
        if number == 1:
            self.backup_started.set()
        state.attempts.append(Attempt("m", "up", f"key-{number}"))
        action = self.script[number]
        try:
            if isinstance(action, Exception):
                raise action
            if action == "stall":
                await anyio.sleep_forever()
            if action == "slow":
                await self.backup_started.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(number)
            raise
        answer = state.answer = Relay(send)
        await answer.plain(200, f"attempt {number}".encode(), [], None)


async def call(app: Any, delay: float = 0.1) -> tuple[Recorder, RequestState]:
    scope = http_scope("/v1/chat/completions")
    state = RequestState(
        ENDPOINTS["/v1/chat/completions"],
        prepare_chat_request(b'{"messages":[{"role":"user","content":"x"}]}', DEFAULTS),
    )
    set_state(scope, state)
    recorder = Recorder()
    with anyio.fail_after(3):
        await ErrorsMiddleware(HedgingMiddleware(app, delay=delay))(scope, receiver(b""), recorder)
    return recorder, state


async def test_a_stalled_attempt_is_raced_and_the_backup_wins() -> None:
    app = Attempts("stall", "answer")
    started = anyio.current_time()
    result, state = await call(app, delay=0.1)
    assert result.body == b"attempt 1" and anyio.current_time() - started < 1.0
    assert app.cancelled == [0]  # the loser is cancelled (its upstream request closed, its key returned)
    assert [str(a) for a in state.attempts] == ["m (key-0)", "m (key-1)"]  # the winner's attempt last


async def test_an_attempt_answering_within_the_delay_is_not_hedged() -> None:
    app = Attempts("answer")
    result, state = await call(app, delay=0.5)
    assert result.body == b"attempt 0" and app.calls == 1 and len(state.attempts) == 1


async def test_the_primary_can_still_win_the_race() -> None:
    app = Attempts("slow", "stall")
    result, _ = await call(app, delay=0.1)
    assert result.body == b"attempt 0" and app.cancelled == [1]


async def test_a_failure_before_the_delay_is_raised_without_a_backup() -> None:
    app = Attempts(UpstreamStatus(500, "down"), "answer")
    result, _ = await call(app, delay=0.5)
    assert result.status == 502 and app.calls == 1


async def test_when_both_fail_an_error_is_raised() -> None:
    calls: list[int] = []
    backup_failed = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(len(calls))
        get_state(scope).attempts.append(Attempt("m", "up", f"key-{len(calls)}"))  # type: ignore[union-attr]
        if len(calls) == 1:
            await backup_failed.wait()
            raise UpstreamStatus(500, "primary down")
        backup_failed.set()
        raise UpstreamStatus(503, "backup down")  # the backup (the last racer started) is the one told

    result, state = await call(app, delay=0.1)
    assert result.status == 503 and len(state.attempts) == 2 and "down" in result.json()["error"]["message"]
