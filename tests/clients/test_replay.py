"""Replay what real clients sent (`fixtures/`, captured by `capture.py`) through megagate against the fake upstream.

The rule under test: megagate is never stricter than its upstream. Every captured request, as sent and with
`stream` flipped, is accepted by megagate (no 4xx), reaches a same-format upstream equal as parsed JSON (headers
such as `anthropic-beta` too), is translated for an upstream of the other format, and gets a well-formed answer in
the client's own format: a JSON body, or an SSE stream that ends as its protocol says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from megagate.routing import endpoint_format
from tests.conftest import FakeControl, Process, start_gateway

pytestmark = pytest.mark.anyio

FIXTURES = sorted((Path(__file__).resolve().parent / "fixtures").glob("*.json"))
SENT_HEADERS = ("anthropic-version", "anthropic-beta", "user-agent", "accept", "content-type")
ANTHROPIC_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "ping"})  # fmt: skip
# gateway name -> (upstream format, hypercorn worker class)
SAME = '["openai", "anthropic", "responses"]'  # every client is served in its own format
GATEWAYS = {
    "same-format": (SAME, "asyncio"),
    "same-format-trio": (SAME, "trio"),
    "to-openai": ('"openai"', "asyncio"),
    "to-anthropic": ('"anthropic"', "asyncio"),
}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def gateways(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    started: dict[str, Process] = {}
    try:
        for name, (fmt, worker) in GATEWAYS.items():
            config = f"""
[[upstreams]]
name = "fake"
base_url = "{fake_upstream.url}"
format = {fmt}
keys = ["sk-mega-replay-key-1111"]
"""
            started[name] = start_gateway(tmp_path_factory.mktemp(name), config, "-k", worker)
        yield started
    finally:
        for process in started.values():
            process.stop()


def variants(request: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The request as captured, then with `stream` flipped (a token count has no stream)."""
    body = request["body"]
    yield "as sent", body
    if request["path"].endswith("count_tokens"):
        return
    if body.get("stream"):
        yield "plain", {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    else:
        yield "streamed", {**body, "stream": True}


def headers_of(request: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in request["headers"].items() if k in SENT_HEADERS}


def check_answer(path: str, streamed: bool, response: httpx.Response) -> None:
    if not streamed:
        answer = response.json()
        if path == "/v1/responses":
            assert answer["object"] == "response" and answer["status"] == "completed" and answer["output"]
        elif path.endswith("count_tokens"):
            assert answer["input_tokens"] > 0
        elif path == "/v1/messages":
            assert answer["type"] == "message" and answer["content"] and answer["stop_reason"]
        else:
            assert answer["choices"][0]["message"]["role"] == "assistant"
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    if path == "/v1/responses":
        data = [json.loads(line[6:]) for b in blocks for line in b.split("\n") if line.startswith("data: ")]
        assert data[0]["type"] == "response.created" and data[-1]["type"] == "response.completed", data[-1]
        assert [d["sequence_number"] for d in data] == list(range(len(data)))
    elif path == "/v1/messages":
        kinds = [line[7:] for b in blocks for line in b.split("\n") if line.startswith("event: ")]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
        assert set(kinds) <= ANTHROPIC_EVENTS, kinds
    else:
        data = [line[6:] for b in blocks for line in b.split("\n") if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        assert all("choices" in json.loads(d) for d in data[:-1])


def counted(body: dict[str, Any], client_format: str) -> dict[str, Any]:
    """What megagate adds to a same-format request: a chat stream asks for its usage (every stream is counted;
    the client sees the usage chunk only if it asked)."""
    if client_format != "openai" or not body.get("stream") or "messages" not in body:
        return body
    return {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
@pytest.mark.parametrize("gateway_name", list(GATEWAYS))
async def test_captured_client_traffic_replays_through_megagate(
    gateways: dict[str, Process], fake: FakeControl, fixture: Path, gateway_name: str
) -> None:
    gateway = gateways[gateway_name]
    upstream_format = GATEWAYS[gateway_name][0]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for request in load(fixture)["requests"]:
            client_format = endpoint_format(request["path"])
            for variant, body in variants(request):
                fake.reset()
                response = await http.post(request["path"], json=body, headers=headers_of(request))
                where = f"{fixture.stem} {request['path']} ({variant})"
                assert response.status_code == 200, f"{where}: {response.text[:500]}"
                check_answer(request["path"], bool(body.get("stream")), response)
                seen = fake.requests()
                if request["path"].endswith("count_tokens") and upstream_format == '"openai"':
                    assert seen == [] and response.headers["x-megagate-estimate"] == "true"  # answered locally
                    continue
                assert len(seen) == 1, where
                if upstream_format == SAME or upstream_format.strip('"') == client_format:
                    assert seen[0]["path"] == request["path"] and seen[0]["body"] == counted(body, client_format), where
                    for name in ("anthropic-version", "anthropic-beta"):
                        assert seen[0]["headers"].get(name) == request["headers"].get(name), (where, name)
                else:
                    assert seen[0]["path"] != request["path"], where


async def test_claude_codes_system_role_message_keeps_its_place_when_translated(
    gateways: dict[str, Process], fake: FakeControl
) -> None:
    """Claude Code's mid-conversation `system` message becomes an OpenAI `system` message at the same position."""
    fixture = next(f for f in FIXTURES if f.stem.startswith("claude-code") and "plain" in f.stem)
    request = load(fixture)["requests"][-1]
    roles = [m["role"] for m in request["body"]["messages"]]
    assert "system" in roles[1:]  # what the capture showed: a system message after the first user turn
    async with httpx.AsyncClient(base_url=gateways["to-openai"].url, timeout=30) as http:
        response = await http.post(request["path"], json=request["body"], headers=headers_of(request))
    assert response.status_code == 200
    sent = fake.requests()[0]["body"]["messages"]
    system_text = request["body"]["messages"][roles.index("system", 1)]["content"]
    assert sent[0]["role"] == "system"  # the top-level system prompt
    assert [m["content"] for m in sent if m["role"] == "system"][1] == system_text
    assert [m["role"] for m in sent][1:3] == ["user", "system"]
