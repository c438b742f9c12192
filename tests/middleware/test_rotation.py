"""RotationMiddleware around a scripted inner app: retries on another key, gives up clearly, never leaks a slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from megagate.config import KeyConfig, Rotation
from megagate.core.errors import (
    InvalidRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from megagate.core.request import OPENAI_RULES, RequestDefaults, prepare_chat_request
from megagate.core.stream_relay import StreamRelay
from megagate.endpoints.relay import SSE_HEADERS, Relay
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.rotation import RotationMiddleware
from megagate.pool.local import LocalKeyPool
from megagate.routing import ENDPOINTS
from megagate.state import RequestState, get_state, set_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio

KEYS = ["sk-mega-one-aaaaaaaa1111", "sk-mega-two-bbbbbbbb2222", "sk-mega-three-cccccc3333"]
DEFAULTS = RequestDefaults.from_values("m", {}, OPENAI_RULES)
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":100}'


async def one_event() -> AsyncIterator[bytes]:
    yield b"data: {}\n\ndata: [DONE]\n\n"


class ScriptedUpstream:
    """Stands in for the proxy: fails with the error scripted for the leased key, else answers 200."""

    def __init__(self, failures: dict[str, UpstreamError | None] | None = None, *, start_then_fail: bool = False):
        self.failures = failures or {}
        self.keys_seen: list[str | None] = []
        self.start_then_fail = start_then_fail

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = get_state(scope)
        assert state is not None
        self.keys_seen.append(state.api_key)
        failure = self.failures.get(state.api_key or "")
        if self.start_then_fail:  # a stream whose first event went out, then its upstream failed
            stream = StreamRelay("openai", "openai", None, lambda data: UpstreamStatus(502, data.decode()))
            state.answer = Relay(send)
            await state.answer.relay(stream, one_event(), SSE_HEADERS)  # then fails below, after the start
        if failure is not None:
            raise failure
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def make_pool(max_concurrency: int | None = None) -> LocalKeyPool:
    return LocalKeyPool("up", [KeyConfig(key=k, max_concurrency=max_concurrency) for k in KEYS])


async def call(app: Any, pool: LocalKeyPool, **rotation: Any) -> tuple[Recorder, RequestState]:
    stack = ErrorsMiddleware(RotationMiddleware(app, pools={"up": pool}, rotation=Rotation(**rotation)))
    scope = http_scope("/v1/chat/completions")
    state = RequestState(ENDPOINTS["/v1/chat/completions"], prepare_chat_request(BODY, DEFAULTS))
    set_state(scope, state)
    recorder = Recorder()
    await stack(scope, receiver(b""), recorder)
    return recorder, state


async def in_flight(pool: LocalKeyPool) -> list[int]:
    return [r.in_flight for r in await pool.report()]


async def test_each_request_gets_the_next_key() -> None:
    upstream, pool = ScriptedUpstream(), make_pool()
    for _ in range(6):
        result, state = await call(upstream, pool)
        assert result.status == 200 and len(state.attempts) == 1
    assert upstream.keys_seen == KEYS * 2
    assert await in_flight(pool) == [0, 0, 0]


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamStatus(429, "slow down", retry_after=2),
        UpstreamStatus(401, "bad key"),
        UpstreamStatus(503, "overloaded"),
        UpstreamConnectError("refused"),
    ],
)
async def test_a_failing_key_is_retried_on_the_next(failure: UpstreamError) -> None:
    upstream, pool = ScriptedUpstream({KEYS[0]: failure}), make_pool()
    result, state = await call(upstream, pool)
    assert result.status == 200
    assert upstream.keys_seen == KEYS[:2] and len(state.attempts) == 2
    assert await in_flight(pool) == [0, 0, 0]


async def test_rate_limit_cools_and_auth_failure_disables_the_key() -> None:
    upstream = ScriptedUpstream(
        {KEYS[0]: UpstreamStatus(429, "slow", retry_after=30), KEYS[1]: UpstreamStatus(401, "no")}
    )
    pool = make_pool()
    await call(upstream, pool)
    reports = await pool.report()
    assert [r.state for r in reports] == ["active", "disabled", "active"]
    assert reports[0].cooling_models == {"m": pytest.approx(30, abs=1)}  # cooled for this model only
    upstream.keys_seen.clear()
    await call(upstream, pool)
    await call(upstream, pool)
    assert upstream.keys_seen == [KEYS[2], KEYS[2]]


async def test_every_key_rate_limited_gives_429_with_the_soonest_retry_after() -> None:
    hints = {KEYS[0]: 9, KEYS[1]: 4, KEYS[2]: 6}
    upstream = ScriptedUpstream({k: UpstreamStatus(429, "busy", retry_after=s) for k, s in hints.items()})
    pool = make_pool()
    result, state = await call(upstream, pool)
    assert result.status == 429 and result.header(b"retry-after") == b"4"
    assert result.json()["error"]["type"] == "rate_limit_error"
    assert result.json()["error"]["message"].count("(key-") == 3  # what was tried, from the attempts
    assert len(state.attempts) == 3
    # The next request finds every key cooling and is told when the first will be back, without waiting.
    result, _ = await call(upstream, pool, max_wait=0)
    assert result.status == 429 and result.header(b"retry-after") == b"4"


async def test_every_key_refused_is_a_502_not_the_clients_401() -> None:
    upstream = ScriptedUpstream({k: UpstreamStatus(401, "invalid api key") for k in KEYS})
    result, _ = await call(upstream, make_pool())
    assert result.status == 502 and "invalid api key" in result.json()["error"]["message"]


@pytest.mark.parametrize(
    "failure, status", [(UpstreamStatus(400, "bad"), 400), (UpstreamTimeout("slow"), 504), (InvalidRequest("x"), 400)]
)
async def test_request_errors_and_timeouts_are_not_retried(failure: Exception, status: int) -> None:
    upstream, pool = ScriptedUpstream({KEYS[0]: failure}), make_pool()  # type: ignore[dict-item]
    result, state = await call(upstream, pool)
    assert result.status == status and upstream.keys_seen == KEYS[:1] and len(state.attempts) == 1
    assert await in_flight(pool) == [0, 0, 0]


async def test_no_retry_once_the_response_started() -> None:
    upstream = ScriptedUpstream({KEYS[0]: UpstreamStatus(503, "gone")}, start_then_fail=True)
    pool = make_pool()
    await call(upstream, pool)
    assert upstream.keys_seen == KEYS[:1]
    assert await in_flight(pool) == [0, 0, 0]


async def test_max_attempts_bounds_the_retries() -> None:
    upstream = ScriptedUpstream({k: UpstreamStatus(500, "down") for k in KEYS})
    result, state = await call(upstream, make_pool(), max_attempts=2)
    assert result.status == 502 and len(state.attempts) == 2 and len(upstream.keys_seen) == 2


async def test_a_cancelled_request_returns_its_slot() -> None:
    class Hang:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await anyio.sleep_forever()

    pool = make_pool(max_concurrency=1)
    with anyio.move_on_after(0.05):
        await call(Hang(), pool)
    assert await in_flight(pool) == [0, 0, 0]


async def test_saturated_keys_wait_for_a_release() -> None:
    """Three keys of concurrency 1, four concurrent requests: the fourth waits for a slot instead of failing."""
    gate = anyio.Event()

    class Slow:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    pool = make_pool(max_concurrency=1)
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await call(Slow(), pool))[0].status)

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        assert await in_flight(pool) == [1, 1, 1]
        gate.set()
    assert statuses == [200] * 4 and await in_flight(pool) == [0, 0, 0]


async def test_without_request_state_or_pool_the_request_passes_through() -> None:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for pools in ({}, {"up": make_pool()}):
        recorder = Recorder()
        await RotationMiddleware(plain, pools=pools)(http_scope("/v1/models", method="GET"), receiver(b""), recorder)
        assert recorder.status == 204
