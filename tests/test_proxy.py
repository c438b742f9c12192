"""The proxy and the relay loop in process, on the in-memory transport: what goes upstream, what comes back, and
that every path (success, failure, cancellation) leaves no open response and no leased key behind."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from megagate.core.errors import UpstreamProtocolError
from megagate.upstream.mock import HANG, MockRequest, MockResponse, sse
from tests.inprocess import CHAT, COMPLETION, KEYS, call, gateway
from tests.middleware.asgi_helpers import Recorder, http_scope

pytestmark = pytest.mark.anyio

CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"


async def in_flight(app: object) -> list[int]:
    return [r.in_flight for pool in app.pools.values() for r in await pool.report()]  # type: ignore[attr-defined]


async def test_a_plain_answer_is_relayed_byte_for_byte_with_a_pool_key() -> None:
    app, transport = gateway([MockResponse(body=[COMPLETION])])
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer client-own-key")]
    result = await call(app, headers=headers)
    assert result.status == 200 and result.body == COMPLETION
    assert result.header(b"x-megagate-model") == b"gpt-4" and result.header(b"x-megagate-attempts") == b"1"
    sent = transport.requests[0]
    assert sent.target == b"/v1/chat/completions" and sent.header(b"authorization") == f"Bearer {KEYS[0]}".encode()
    assert msgspec.json.decode(sent.body) == CHAT and b"client-own-key" not in str(sent.headers).encode()
    assert await in_flight(app) == [0, 0] and transport.open_responses == 0


async def test_an_anthropic_client_is_translated_onto_an_openai_upstream() -> None:
    app, transport = gateway([MockResponse(body=[COMPLETION])])
    body = {"model": "gpt-4", "max_tokens": 10, "system": "brief", "messages": [{"role": "user", "content": "hi"}]}
    result = await call(app, "/v1/messages", body)
    answer = result.json()
    assert result.status == 200 and answer["type"] == "message" and answer["content"][0]["text"] == "hello"
    sent = msgspec.json.decode(transport.requests[0].body)
    assert sent["messages"][0] == {"role": "system", "content": "brief"}


async def test_a_stream_is_relayed_event_by_event() -> None:
    app, _ = gateway([sse(CHUNK, CHUNK, DONE)])
    result = await call(app, body={**CHAT, "stream": True})
    assert result.header(b"content-type").startswith(b"text/event-stream")  # type: ignore[union-attr]
    bodies = [m["body"] for m in result.messages[1:]]
    assert bodies == [CHUNK, CHUNK, DONE, b""] and result.messages[-1]["more_body"] is False


async def test_a_rate_limited_key_is_retried_on_the_next() -> None:
    limited = MockResponse(429, body=[b'{"error":{"message":"slow down"}}'], headers=[(b"retry-after", b"7")])
    app, transport = gateway([limited, MockResponse(body=[COMPLETION])])
    result = await call(app)
    assert result.status == 200 and result.header(b"x-megagate-attempts") == b"2"
    keys = [r.header(b"authorization") for r in transport.requests]
    assert keys == [f"Bearer {k}".encode() for k in KEYS]
    first_key = (await app.pools["up"].report())[0]
    assert first_key.cooling_models["gpt-4"] > 6  # its Retry-After, for that model


async def test_a_pool_key_echoed_in_an_upstream_error_is_scrubbed() -> None:
    echo = MockResponse(400, body=[f'{{"error":{{"message":"bad key {KEYS[0]}"}}}}'.encode()])
    app, _ = gateway([echo])
    result = await call(app)
    assert result.status == 400 and KEYS[0] not in result.body.decode() and "[redacted]" in result.body.decode()


async def test_a_drop_after_the_first_event_ends_the_stream_with_an_error_event() -> None:
    app, transport = gateway([sse(CHUNK, CHUNK, UpstreamProtocolError("the upstream reset the connection"))])
    result = await call(app, body={**CHAT, "stream": True})
    assert result.status == 200
    assert result.body.startswith(CHUNK * 2) and result.body.endswith(DONE)
    assert b"reset the connection" in result.body
    assert await in_flight(app) == [0, 0] and transport.open_responses == 0


async def test_an_error_event_before_the_first_is_retried_on_another_key() -> None:
    error = b'data: {"error":{"message":"overloaded","type":"api_error"}}\n\n'
    app, transport = gateway([sse(error), sse(CHUNK, DONE)])
    result = await call(app, body={**CHAT, "stream": True})
    assert result.body == CHUNK + DONE and len(transport.requests) == 2


async def test_a_silent_stream_hits_the_first_byte_timeout_as_a_504() -> None:
    app, transport = gateway([sse(HANG), sse(HANG)], timeouts={"first_byte": 0.05})
    result = await call(app, body={**CHAT, "stream": True})
    assert result.status == 504 and "first-byte" in result.json()["error"]["message"]
    assert len(transport.requests) == 1  # a timeout is the fallback layer's call, not another key's


async def test_cancelled_mid_stream_nothing_is_left_open_or_leased() -> None:
    """The client's task is cancelled while the upstream is mid-body: the response context is left and the key
    returned, on every event loop."""
    app, transport = gateway([sse(CHUNK, HANG)])
    with anyio.move_on_after(0.05):
        await call(app, body={**CHAT, "stream": True})
    assert transport.open_responses == 0 and await in_flight(app) == [0, 0]


async def test_cancelled_while_waiting_for_headers_nothing_is_left_open_or_leased() -> None:
    app, transport = gateway([MockResponse(before_headers=10.0)])
    with anyio.move_on_after(0.05):
        await call(app)
    assert transport.open_responses == 0 and await in_flight(app) == [0, 0]


async def test_the_target_decides_path_format_and_auth_for_an_anthropic_upstream() -> None:
    answer = msgspec.json.encode({
        "id": "m1", "type": "message", "role": "assistant", "model": "gpt-4", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "hello"}], "usage": {"input_tokens": 1, "output_tokens": 1},
    })  # fmt: skip

    def answer_for(request: MockRequest) -> MockResponse:
        return MockResponse(body=[answer])

    app, transport = gateway(answer_for, fmt="anthropic")
    result = await call(app)
    assert result.status == 200 and result.json()["choices"][0]["message"]["content"] == "hello"
    sent = transport.requests[0]
    assert sent.target == b"/v1/messages" and sent.header(b"x-api-key") == KEYS[0].encode()
    assert sent.header(b"anthropic-version") is not None and sent.header(b"authorization") is None


async def test_hosted_tools_a_chat_upstream_cannot_run_are_left_out_and_said_so() -> None:
    app, transport = gateway([MockResponse(body=[COMPLETION])])
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "web_search"}]
    result = await call(app, "/v1/responses", {"model": "gpt-4", "input": "hi", "tools": tools})
    assert result.status == 200 and result.header(b"x-megagate-dropped-tools") == b"web_search"
    sent = msgspec.json.decode(transport.requests[0].body)
    assert [t["function"]["name"] for t in sent["tools"]] == ["f"]
    assert result.json()["output"][0]["content"][0]["text"] == "hello"


async def test_a_responses_upstream_gets_the_request_byte_for_byte() -> None:
    body = b'{"model":"gpt-4","input":"hi","previous_response_id":"resp_1","store":true}'
    answer = b'{"id":"resp_2","object":"response","output":[]}'
    app, transport = gateway([MockResponse(body=[answer])], fmt=["responses"])
    result = await call(app, "/v1/responses", body)
    assert result.status == 200 and result.body == answer
    assert transport.requests[0].target == b"/v1/responses" and transport.requests[0].body == body


async def test_a_client_that_disconnects_cancels_the_upstream_call_at_once() -> None:
    """ASGI servers only deliver `http.disconnect`: the proxy's watcher turns it into a cancellation of the upstream
    call, which closes the response and returns the key, without waiting for the upstream."""
    app, transport = gateway([sse(CHUNK, HANG)])
    body = msgspec.json.encode({**CHAT, "stream": True})
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    left = anyio.Event()

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        await left.wait()
        return {"type": "http.disconnect"}

    recorder = Recorder()
    async with anyio.create_task_group() as group:
        group.start_soon(app, http_scope("/v1/chat/completions"), receive, recorder)
        await anyio.wait_all_tasks_blocked()  # the first event relayed, the upstream hanging: no wall-clock guess
        assert transport.open_responses == 1
        left.set()
    assert transport.open_responses == 0 and await in_flight(app) == [0, 0]
