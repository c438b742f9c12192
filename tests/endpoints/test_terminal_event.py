"""A `/v1/responses` stream that started and then broke ends as its own response: `response.failed` with the id
the stream announced and the next sequence number, whatever the upstream's format and whoever cut it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from megagate.core.errors import UpstreamProtocolError
from megagate.upstream.mock import HANG, sse
from tests.inprocess import call, gateway

pytestmark = pytest.mark.anyio

RESPONSES = {"model": "gpt-4", "input": "hi", "stream": True}
STARTS: dict[str, list[bytes]] = {
    "openai": [
        b'data: {"id":"c7","object":"chat.completion.chunk","created":1,"model":"gpt-4",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hel"}}]}\n\n',
        b'data: {"id":"c7","object":"chat.completion.chunk","created":1,"model":"gpt-4",'
        b'"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n',
    ],
    "anthropic": [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_7","type":"message",'
        b'"role":"assistant","model":"gpt-4","content":[],"stop_reason":null,"usage":{"input_tokens":3,'
        b'"output_tokens":0}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"hello"}}\n\n',
    ],
    "responses": [
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_up7",'
        b'"object":"response","created_at":5,"model":"gpt-4","status":"in_progress","output":[]}}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
        b'"item_id":"msg_1","output_index":0,"content_index":0,"delta":"hello"}\n\n',
    ],
}


def events(body: bytes) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(line[6:])
        for block in body.split(b"\n\n")
        for line in block.split(b"\n")
        if line.startswith(b"data: ")
    ]


@pytest.mark.parametrize("upstream", ["openai", "anthropic", "responses"])
@pytest.mark.parametrize("cut", ["mid_stream_failure", "request_deadline"])
async def test_a_started_responses_stream_ends_with_its_own_response_failed(upstream: str, cut: str) -> None:
    ending: object = UpstreamProtocolError("the upstream reset the connection") if cut == "mid_stream_failure" else HANG
    fmt = ["openai", "responses"] if upstream == "responses" else upstream  # a Responses upstream speaks chat too
    app, _ = gateway([sse(*STARTS[upstream], ending)], fmt=fmt, timeouts={"total": 0.3})  # type: ignore[list-item]
    result = await call(app, "/v1/responses", RESPONSES)
    assert result.status == 200
    told = events(result.body)
    created, last = told[0], told[-1]
    assert created["type"] == "response.created" and last["type"] == "response.failed"
    assert last["response"]["id"] == created["response"]["id"] and last["response"]["status"] == "failed"
    assert [e["sequence_number"] for e in told] == list(range(told[0]["sequence_number"], len(told)))
    assert ("request deadline" if cut == "request_deadline" else "reset") in last["response"]["error"]["message"]
    assert result.messages[-1]["more_body"] is False
