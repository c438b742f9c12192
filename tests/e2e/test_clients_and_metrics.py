"""Client auth on both routes, /metrics after scripted traffic, the access log, and no secret anywhere, end to end."""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import GATEWAY_KEYS, FakeControl, Process, gateway_toml, start_gateway

pytestmark = pytest.mark.anyio

ALICE, BOB, CAROL = "sk-client-alice-000001", "sk-client-bob-000002", "sk-client-carol-000003"
ADMIN = "admin-token-for-metrics-77"
SECRETS = [ALICE, BOB, CAROL, ADMIN, *GATEWAY_KEYS]


@pytest.fixture(scope="module")
def guarded_gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    bob_digest = hashlib.sha256(BOB.encode()).hexdigest()
    extra = f"""admin_token = "{ADMIN}"
[fallbacks]
"broken-model" = ["gpt-4"]
[[clients]]
name = "alice"
key = "{ALICE}"
models = ["gpt-*", "claude-*", "broken-*", "openai-*"]
[[clients]]
name = "bob"
key_sha256 = "{bob_digest}"
rpm = 2
[[clients]]
name = "carol"
key = "{CAROL}"
revoked = true
"""
    process = start_gateway(tmp_path_factory.mktemp("guarded"), gateway_toml(fake_upstream.url, extra=extra))
    yield process
    process.stop()
    output = process.output()
    for secret in SECRETS:
        assert secret not in output, "a secret reached the gateway's output"


def raw(gateway: Process, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(gateway.url + path, data=data, method="POST" if data else "GET")
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-opus-4-1-20250805", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
ROUTES = [("/v1/chat/completions", CHAT, "openai"), ("/v1/messages", MESSAGES, "anthropic")]


def error_type(body: bytes, fmt: str) -> str:
    decoded = json.loads(body)
    if fmt == "anthropic":
        assert decoded["type"] == "error"
    return str(decoded["error"]["type"])


@pytest.mark.parametrize("path, body, fmt", ROUTES, ids=["openai", "anthropic"])
@pytest.mark.parametrize(
    "headers, status, kind",
    [
        ({}, 401, "authentication_error"),
        ({"authorization": "Bearer sk-client-wrong"}, 401, "authentication_error"),
        ({"x-api-key": CAROL}, 401, "authentication_error"),  # revoked
        ({"authorization": f"Bearer {ALICE}"}, 200, None),
        ({"x-api-key": ALICE}, 200, None),
    ],
    ids=["no key", "wrong key", "revoked", "bearer", "x-api-key"],
)
def test_client_keys_on_both_routes(
    guarded_gateway: Process, fake: FakeControl, path: str, body: Any, fmt: str, headers: Any, status: int, kind: Any
) -> None:
    got, _, answer = raw(guarded_gateway, path, body, headers)
    assert got == status
    assert not any(secret.encode() in answer for secret in SECRETS)
    if kind:
        assert error_type(answer, fmt) == kind and fake.requests() == []
    else:
        seen = fake.requests()[-1]
        assert ALICE not in json.dumps(seen) and seen["key"] in GATEWAY_KEYS


@pytest.mark.parametrize("path, body, fmt", ROUTES, ids=["openai", "anthropic"])
def test_a_model_outside_the_allowlist_is_403(guarded_gateway: Process, path: str, body: Any, fmt: str) -> None:
    status, _, answer = raw(guarded_gateway, path, {**body, "model": "gemini-2.5-pro"}, {"x-api-key": ALICE})
    assert status == 403 and error_type(answer, fmt) == "permission_error"
    status, _, _ = raw(guarded_gateway, path, {**body, "fallback_models": ["gemini-2.5-pro"]}, {"x-api-key": ALICE})
    assert status == 403


async def test_an_over_limit_client_gets_429_with_retry_after(guarded_gateway: Process, fake: FakeControl) -> None:
    async with openai.AsyncOpenAI(base_url=guarded_gateway.url + "/v1", api_key=BOB, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as caught:  # rpm = 2 (the other event loop's run may have used it)
            for _ in range(3):
                await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert int(caught.value.response.headers["retry-after"]) > 0
    async with anthropic.AsyncAnthropic(base_url=guarded_gateway.url, api_key=BOB, max_retries=0) as claude:
        with pytest.raises(anthropic.RateLimitError) as limited:
            await claude.messages.create(**MESSAGES)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (Prometheus text format), 0 if none."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_after_scripted_traffic(guarded_gateway: Process, fake: FakeControl) -> None:
    assert raw(guarded_gateway, "/metrics")[0] == 401  # the admin token guards it
    before = raw(guarded_gateway, "/metrics", headers={"authorization": f"Bearer {ADMIN}"})[2].decode()
    alice = {"authorization": f"Bearer {ALICE}"}
    fake.add_rule({"status": 429, "retry_after": 1}, model="gpt-4", times=1)  # one key rate limited, then fine
    for _ in range(3):
        assert raw(guarded_gateway, "/v1/chat/completions", CHAT, alice)[0] == 200
    fake.add_rule({"status": 500}, model="broken-model")  # every key fails: falls back to gpt-4
    assert raw(guarded_gateway, "/v1/chat/completions", {**CHAT, "model": "broken-model"}, alice)[0] == 200
    assert raw(guarded_gateway, "/v1/chat/completions", {**CHAT, "temperature": 9}, alice)[0] == 400
    after = raw(guarded_gateway, "/metrics", headers={"authorization": f"Bearer {ADMIN}"})[2].decode()

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    route = "/v1/chat/completions"
    assert grew("megagate_requests_total", route=route, model="gpt-4", client="alice", status="2xx") == 3
    assert grew("megagate_requests_total", route=route, model="broken-model", client="alice", status="2xx") == 1
    assert grew("megagate_requests_total", route=route, model="none", client="alice", status="4xx") == 1
    assert grew("megagate_upstream_attempts_total", outcome="rate_limited") == 1
    assert grew("megagate_upstream_attempts_total", outcome="server_error") == 3
    assert grew("megagate_fallbacks_total", from_model="broken-model", to_model="gpt-4") == 1
    completion_tokens = grew("megagate_tokens_total", model="gpt-4", client="alice", kind="completion")
    assert completion_tokens == 4 * 33  # four answers of the fake's 33 words
    assert grew("megagate_request_duration_seconds_count", route=route) == 5
    assert grew("megagate_time_to_first_token_seconds_count", route=route, model="gpt-4") == 3
    assert (
        metric(after, "megagate_key_state", state="active") + metric(after, "megagate_key_state", state="cooling") >= 1
    )
    assert "megagate_in_flight" in after
    for secret in SECRETS:
        assert secret not in after


def test_access_log_has_one_json_line_per_request(guarded_gateway: Process, fake: FakeControl) -> None:
    status, headers, _ = raw(
        guarded_gateway, "/v1/chat/completions", CHAT, {"x-api-key": ALICE, "x-request-id": "trace-abc.123"}
    )
    assert status == 200 and headers["x-request-id"] == "trace-abc.123"
    assert fake.requests()[-1]["headers"]["x-request-id"] == "trace-abc.123"  # it travels upstream too
    _, generated, _ = raw(guarded_gateway, "/v1/chat/completions", CHAT, {"x-api-key": ALICE, "x-request-id": "a b"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated["x-request-id"])  # an insane id is replaced
    line = guarded_gateway.access_line("trace-abc.123")
    assert line["client"] == "alice" and line["model"] == "gpt-4" and line["served_model"] == "gpt-4"
    assert line["status"] == 200 and line["attempts"] == 1 and line["completion_tokens"] == 33
    assert line["duration_ms"] >= line["ttft_ms"] > 0 and line["keys"][0].startswith("key-")
    assert "hi" not in json.dumps(line)  # no message content


def test_readyz_and_healthz_stay_open(guarded_gateway: Process) -> None:
    assert raw(guarded_gateway, "/healthz")[0] == 200
    assert raw(guarded_gateway, "/readyz")[0] == 200


def test_metrics_add_up_across_workers_in_multiprocess_mode(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "prometheus").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url), "-w", "2")

    def workers_seen() -> int:  # each worker writes its gauge files when its gateway starts
        return len(set(re.findall(r'pid="(\d+)"', raw(gateway, "/metrics")[2].decode())))

    try:
        deadline, seen = time.monotonic() + 20, 0  # a spawned worker can take seconds to start on a busy machine
        while seen < 2 and time.monotonic() < deadline:
            seen = workers_seen()
            time.sleep(0.1)
        assert seen == 2  # both workers' files are read, whichever worker answers /metrics...
        for _ in range(6):
            assert raw(gateway, "/v1/chat/completions", CHAT)[0] == 200
        time.sleep(0.3)  # a worker counts a request just after its last byte went out
        text = raw(gateway, "/metrics")[2].decode()
    finally:
        gateway.stop()
    assert metric(text, "megagate_requests_total", route="/v1/chat/completions", status="2xx") == 6  # ...and summed
