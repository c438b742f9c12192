"""Each fact of a request has one writer: the route is resolved once, the target is rotation's, and what the client
was sent (started, usage, a stream's failure) is the answer's alone."""

from __future__ import annotations

from typing import Any

import pytest

from megagate import state as state_module
from megagate.config import config_from_mapping
from megagate.core.errors import NotFound
from megagate.core.request import RequestDefaults, prepare_chat_request
from megagate.core.usage import Usage
from megagate.endpoints.proxy import UpstreamProxy
from megagate.endpoints.relay import Relay
from megagate.routing import ENDPOINTS, Routes
from megagate.state import RequestState, route_of, set_state
from megagate.upstream.mock import MockResponse, MockTransport
from tests.inprocess import CHAT, COMPLETION, call, gateway
from tests.middleware.asgi_helpers import Recorder, http_scope, receiver

pytestmark = pytest.mark.anyio
CONFIG = {"upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": ["sk-mega-state-0001"]}]}


def chat_state() -> RequestState:
    request = prepare_chat_request(b'{"messages":[{"role":"user","content":"hi"}]}', RequestDefaults("gpt-4"))
    return RequestState(ENDPOINTS["/v1/chat/completions"], request)


@pytest.mark.parametrize("fact", ["response_started", "usage", "stream_failure"])
def test_what_the_client_was_sent_cannot_be_written_on_the_state(fact: str) -> None:
    """Only the answer (the relay) knows it: a layer that tries to record it itself breaks here."""
    with pytest.raises(AttributeError):
        setattr(chat_state(), fact, None)


async def test_the_answer_is_the_one_writer_of_started_and_usage() -> None:
    state, recorder = chat_state(), Recorder()
    answer = state.answer = Relay(recorder)
    assert not state.response_started and state.usage is None
    await answer.plain(200, b"{}", [(b"content-type", b"application/json")], Usage(input=1, output=2))
    assert state.response_started and state.usage == Usage(input=1, output=2) and recorder.status == 200


async def test_the_route_is_resolved_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics, the access log, errors, auth and defaults all read the route; one of them resolves it."""
    resolved: list[str] = []
    below_mount = state_module._below_mount

    def counting(path: str, root: str) -> str:
        resolved.append(path)
        return below_mount(path, root)

    monkeypatch.setattr(state_module, "_below_mount", counting)
    app, _ = gateway(lambda request: MockResponse(body=[COMPLETION]))
    assert (await call(app, body=CHAT)).status == 200
    assert resolved == ["/v1/chat/completions"]


def test_a_route_seen_before_a_mount_is_resolved_again_below_it() -> None:
    scope: dict[str, Any] = http_scope("/llm/v1/messages")
    assert route_of(scope).endpoint is None  # an outer layer, before the mount
    scope["root_path"] = "/llm"
    assert route_of(scope).path == "/v1/messages" and route_of(scope).format == "anthropic"


async def test_the_proxy_never_chooses_a_target_rotation_did_not_give() -> None:
    """In megagate's stack the target is rotation's alone: a proxy left without one answers 404, it does not ask
    `routing.choose` a second time. Embedded alone, it is given `route` and chooses itself."""
    config = config_from_mapping(CONFIG, environ={})
    transport = MockTransport(lambda request: MockResponse())
    scope, state = http_scope("/v1/chat/completions"), chat_state()
    set_state(scope, state)
    with pytest.raises(NotFound):
        await UpstreamProxy(config=config, transport=transport)(scope, receiver(b""), Recorder())
    recorder = Recorder()
    await UpstreamProxy(config=config, transport=transport, route=Routes(config))(scope, receiver(b""), recorder)
    assert recorder.status == 200 and state.target is not None and state.target.upstream.name == "up"
