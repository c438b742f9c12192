"""Key rotation end to end: a real hypercorn process with three pool keys, the fake upstream and the openai SDK."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest

from tests.conftest import GATEWAY_KEYS, FakeControl, Process, gateway_toml, start_gateway

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "admin-secret-token-5f2e9c"
KEY_A, KEY_B, KEY_C = GATEWAY_KEYS


@pytest.fixture
def rotating_gateway(fake_upstream: Process, tmp_path: Path) -> Iterator[Process]:
    extra = f'admin_token = "{ADMIN_TOKEN}"\n[rotation]\nmax_wait = 0.5\n'
    process = start_gateway(tmp_path, gateway_toml(fake_upstream.url, extra=extra))
    yield process
    process.stop()
    output = process.output()
    for secret in [*GATEWAY_KEYS, ADMIN_TOKEN]:
        assert secret not in output, "a secret reached the gateway's stdout/stderr"


def sdk(gateway: Process) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="client-key-not-forwarded", max_retries=0)


async def ask(client: openai.AsyncOpenAI) -> str:
    completion = await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    return completion.choices[0].message.content or ""


def admin_keys(gateway: Process, token: str | None = ADMIN_TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(gateway.url + "/admin/keys")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_thirty_requests_use_each_key_ten_times(rotating_gateway: Process, fake: FakeControl) -> None:
    async with sdk(rotating_gateway) as client:
        for _ in range(30):
            assert await ask(client)
    seen = fake.requests()
    assert Counter(r["key"] for r in seen) == {KEY_A: 10, KEY_B: 10, KEY_C: 10}
    assert all("client-key-not-forwarded" not in str(r["headers"]) for r in seen)


async def test_a_rate_limited_key_rests_for_its_retry_after(rotating_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 429, "retry_after": 2}, key=KEY_A, times=1)
    async with sdk(rotating_gateway) as client:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # clients only ever see successes meanwhile
            assert await ask(client)
        await anyio.sleep(2.1 - (time.monotonic() - started))
        for _ in range(3):
            assert await ask(client)
    seen = fake.requests()
    to_a = [r["at"] for r in seen if r["key"] == KEY_A]
    limited_at = to_a[0]  # the first request to A got the 429
    assert all(at >= limited_at + 2 for at in to_a[1:]), "key A got traffic while cooling"
    assert len(to_a) >= 2, "key A never came back after its cooldown"


async def test_a_refused_key_gets_no_further_traffic(rotating_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 401, "message": f"invalid key {KEY_B}"}, key=KEY_B)
    async with sdk(rotating_gateway) as client:
        for _ in range(12):
            assert await ask(client)
    assert Counter(r["key"] for r in fake.requests())[KEY_B] == 1
    status, body = admin_keys(rotating_gateway)
    keys = msgspec.json.decode(body)["data"]
    refused = [k for k in keys if k["state"] == "disabled"]
    assert status == 200 and len(refused) == 1 and refused[0]["mask"] == "sk-mega-…2222"
    assert KEY_B not in body.decode() and "[redacted]" in refused[0]["last_error"]


async def test_every_key_rate_limited_reaches_the_client_as_429(rotating_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 429, "retry_after": 3})
    async with sdk(rotating_gateway) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client)
        assert caught.value.response.headers["retry-after"] == "3"
        assert sorted(r["key"] for r in fake.requests()) == sorted(GATEWAY_KEYS)
        # Every key is cooling now: the next request is answered at once, without reaching the upstream.
        fake.reset()
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client)
        assert int(caught.value.response.headers["retry-after"]) in (2, 3)
        assert fake.requests() == []


async def test_admin_keys_needs_the_token_and_shows_masks_only(rotating_gateway: Process, fake: FakeControl) -> None:
    assert admin_keys(rotating_gateway, token=None)[0] == 401
    assert admin_keys(rotating_gateway, token="wrong")[0] == 401
    status, body = admin_keys(rotating_gateway)
    keys = msgspec.json.decode(body)["data"]
    assert status == 200 and [k["mask"] for k in keys] == ["sk-mega-…1111", "sk-mega-…2222", "sk-mega-…3333"]
    assert all(k["state"] == "active" and k["in_flight"] == 0 and k["id"].startswith("key-") for k in keys)
    for secret in GATEWAY_KEYS:
        assert secret not in body.decode()


async def test_admin_routes_are_absent_without_an_admin_token(gateway: Process) -> None:
    assert admin_keys(gateway)[0] == 404


async def test_every_key_refused_is_a_503_until_the_probe_not_a_rate_limit(
    rotating_gateway: Process, fake: FakeControl
) -> None:
    """A 401/403 on every key says the keys are bad, not busy: 503 with Retry-After to the next probe, no 429."""
    fake.add_rule({"status": 401, "message": "invalid key"})
    async with sdk(rotating_gateway) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(client)
        assert caught.value.status_code == 502  # the first request is told what the upstream said
        fake.reset()
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(client)
    assert caught.value.status_code == 503 and not isinstance(caught.value, openai.RateLimitError)
    assert "no usable upstream key: refused by the upstream" in caught.value.message
    assert 590 <= int(caught.value.response.headers["retry-after"]) <= 600  # probe_interval defaults to 600 s
    assert fake.requests() == []


async def test_a_local_token_count_takes_no_key(fake_upstream: Process, fake: FakeControl, tmp_path: Path) -> None:
    """count_tokens for a model only an OpenAI-format upstream serves: answered here, no lease, no upstream call;
    an Anthropic-format upstream that 404s the route gets the same local answer."""
    import anthropic

    config = f"""admin_token = "{ADMIN_TOKEN}"
[[upstreams]]
name = "openai-only"
base_url = "{fake_upstream.url}"
format = "openai"
models = ["gpt-*"]
keys = ["{KEY_A}"]

[[upstreams]]
name = "anthropic-no-count"
base_url = "{fake_upstream.url}"
format = "anthropic"
models = ["claude-*"]
keys = ["{KEY_B}"]
"""
    gateway = start_gateway(tmp_path, config)
    try:
        fake.add_rule({"status": 404}, path="/v1/messages/count_tokens")
        messages: Any = [{"role": "user", "content": "count these words please"}]
        async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="x", max_retries=0) as client:
            local = await client.messages.count_tokens(model="gpt-5", messages=messages)
            assert local.input_tokens > 0 and fake.requests() == []
            keys = {k["upstream"]: k for k in msgspec.json.decode(admin_keys(gateway)[1])["data"]}
            assert keys["openai-only"]["requests_last_minute"] == 0 and keys["openai-only"]["in_flight"] == 0
            after_404 = await client.messages.count_tokens(model="claude-x", messages=messages)
            assert after_404.input_tokens == local.input_tokens  # the same estimate, whichever way it came
            assert [r["path"] for r in fake.requests()] == ["/v1/messages/count_tokens"]
    finally:
        gateway.stop()
