"""The one response observer: a single `send` wrapper for the whole stack, headers scoped to the layer adding them."""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import pytest

from megagate.asgi import ResponseObserver, observe_response
from megagate.core.errors import UpstreamStatus
from megagate.core.request import RequestDefaults, prepare_chat_request
from megagate.middleware.access_log import AccessLogMiddleware
from megagate.middleware.errors import ErrorsMiddleware
from megagate.middleware.fallback import FallbackMiddleware
from megagate.middleware.metrics import MetricsMiddleware
from megagate.ops.prometheus import Metrics
from megagate.routing import ENDPOINTS
from megagate.state import RequestState, set_state
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio


class Streamer:
    """An inner app that streams three events, keeping the `send` it was given."""

    def __init__(self) -> None:
        self.sends: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.sends.append(send)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class FrameCounter(Recorder):
    """The client's `send`: records, and counts the frames between the inner app's `send` call and itself (each
    wrapper around `send` is one frame on every streamed event)."""

    def __init__(self) -> None:
        super().__init__()
        self.wrappers: list[int] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        frame, depth = sys._getframe(1), 0
        while frame is not None and frame.f_code is not Streamer.__call__.__code__:
            frame, depth = frame.f_back, depth + 1
        self.wrappers.append(depth)
        await super().__call__(message)


def chat_scope() -> dict[str, Any]:
    scope = http_scope("/v1/chat/completions")
    body = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    set_state(scope, RequestState(ENDPOINTS["/v1/chat/completions"], prepare_chat_request(body, RequestDefaults("m"))))
    return scope


async def test_the_stack_wraps_send_once_and_every_layer_sees_the_response() -> None:
    inner = Streamer()
    ticks = iter(range(100))
    metrics = Metrics(model_cap=10)
    stack = MetricsMiddleware(
        AccessLogMiddleware(ErrorsMiddleware(FallbackMiddleware(inner)), clock=lambda: 0.0),
        metrics=metrics,
        clock=lambda: float(next(ticks)),
    )
    recorder, scope = FrameCounter(), chat_scope()
    await stack(scope, receiver(b""), recorder)
    watched = scope["megagate.response"]
    # One wrapper between the client's send and the inner app, whatever the number of observing layers.
    assert recorder.wrappers == [1] * 5
    assert watched.status == 200 and watched.first_byte == 1.0  # the installer's (outermost) clock
    names = [name for name, _ in recorder.messages[0]["headers"]]
    assert names == [b"content-type", b"x-megagate-model", b"x-megagate-attempts", b"x-request-id"]
    assert [m.get("body") for m in recorder.messages[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert metrics.requests("/v1/chat/completions", "m", "anonymous", "2xx")._value.get() == 1


async def test_an_error_rendered_outside_fallback_does_not_claim_a_served_model() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise UpstreamStatus(503, "down")

    recorder = Recorder()
    await AccessLogMiddleware(ErrorsMiddleware(FallbackMiddleware(failing)))(chat_scope(), receiver(b""), recorder)
    assert recorder.status == 503
    assert recorder.header(b"x-megagate-model") is None  # fallback's header only for answers started inside it
    assert recorder.header(b"x-request-id") is not None  # the access log is outside the error renderer


async def test_a_layer_alone_installs_the_watch_itself() -> None:
    inner = Streamer()
    recorder = Recorder()
    await ErrorsMiddleware(inner)(chat_scope(), receiver(b""), recorder)
    assert inner.sends[0] is not recorder  # its own wrapper: nothing outside watched
    assert len(recorder.messages) == 5


async def test_headers_are_added_innermost_first_and_only_while_added() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope: dict[str, Any] = {}
    watch, watched = observe_response(scope, send, clock=lambda: 7.0)
    assert observe_response(scope, watched) == (watch, watched)  # found: no second wrapper

    def outer(headers: Any) -> Any:
        return [*headers, (b"outer", b"1")]

    def inner(headers: Any) -> Any:
        return [*headers, (b"inner", b"1")]

    with watch.adding_headers(outer), watch.adding_headers(inner):
        pass
    assert watch.hooks == []
    with watch.adding_headers(outer), watch.adding_headers(inner):
        await watched({"type": "http.response.start", "status": 201, "headers": []})
    await watched({"type": "http.response.body", "body": b"x"})
    assert sent[0]["headers"] == [(b"inner", b"1"), (b"outer", b"1")]
    assert isinstance(watch, ResponseObserver) and watch.started and watch.first_byte == 7.0
