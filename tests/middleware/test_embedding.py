"""Single middlewares embedded in front of someone else's app: every attempt gets the request body from `receive`.

The rule: rotation, fallback and hedging may run the inner app more than once; each run sees the (possibly
rewritten) body, then waits for `http.disconnect`, as ASGI promises an app that knows nothing of megagate.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from megagate.config import KeyConfig
from megagate.core.errors import UpstreamStatus
from megagate.middleware.defaults import DefaultsMiddleware
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.fallback import FallbackMiddleware
from megagate.middleware.hedging import HedgingMiddleware
from megagate.middleware.rotation import RotationMiddleware
from megagate.pool.local import LocalKeyPool
from megagate.state import get_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio

KEYS = ["sk-mega-embed-one-1111", "sk-mega-embed-two-2222"]
BODY = b'{"messages":[{"role":"user","content":"hello"}]}'


class BodyReadingApp:
    """An embedder's app: reads its whole body on every call, fails the first `fail` calls with a 429."""

    def __init__(self, fail: int = 1, *, stall_first: bool = False) -> None:
        self.fail = fail
        self.stall_first = stall_first
        self.bodies: list[dict[str, Any]] = []
        self.keys: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "http.request" and not message.get("more_body")
        self.bodies.append(msgspec.json.decode(message["body"]))
        state = get_state(scope)
        self.keys.append(state.api_key if state else None)
        if self.stall_first and len(self.bodies) == 1:
            await anyio.sleep_forever()
        if len(self.bodies) <= self.fail:
            raise UpstreamStatus(429, "busy", retry_after=1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})


def stack(app: Any, *layers: tuple[type, dict[str, Any]]) -> Any:
    for cls, kwargs in reversed(layers):
        app = cls(app, **kwargs)
    return ErrorsMiddleware(DefaultsMiddleware(app, default_model="m"))


async def run(app: Any) -> Recorder:
    recorder = Recorder()
    with anyio.fail_after(3):  # an app left waiting for its body would hang here
        await app(http_scope("/v1/chat/completions"), receiver(BODY), recorder)
    return recorder


async def test_rotation_gives_the_body_to_every_attempt_and_the_second_key_serves() -> None:
    inner = BodyReadingApp(fail=1)
    pool = LocalKeyPool("up", [KeyConfig(key=k) for k in KEYS])
    result = await run(stack(inner, (RotationMiddleware, {"pools": {"up": pool}})))
    assert result.status == 200 and result.json() == {"ok": True}
    assert [b["messages"] for b in inner.bodies] == [[{"role": "user", "content": "hello"}]] * 2
    assert inner.keys == KEYS


async def test_fallback_gives_each_model_the_body_with_that_model() -> None:
    inner = BodyReadingApp(fail=1)
    result = await run(stack(inner, (FallbackMiddleware, {"chains": {"m": ["backup"]}})))
    assert result.status == 200
    assert [b["model"] for b in inner.bodies] == ["m", "backup"]


async def test_hedging_gives_both_racers_the_body() -> None:
    inner = BodyReadingApp(fail=0, stall_first=True)
    result = await run(stack(inner, (HedgingMiddleware, {"delay": 0.05})))
    assert result.status == 200 and len(inner.bodies) == 2 and inner.bodies[0] == inner.bodies[1]


async def test_after_the_body_the_app_waits_for_the_disconnect() -> None:
    """The second receive is the client's disconnect, not the body again."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])

    disconnected = [{"type": "http.request", "body": BODY, "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return disconnected.pop(0)

    pool = LocalKeyPool("up", [KeyConfig(key=k) for k in KEYS])
    wrapped = stack(app, (FallbackMiddleware, {}), (RotationMiddleware, {"pools": {"up": pool}}))
    with anyio.fail_after(3):
        await wrapped(http_scope("/v1/chat/completions"), receive, Recorder())
    assert seen == ["http.request", "http.disconnect"]
