"""Fallback, timeouts and streaming failures end to end: hypercorn + fake upstream + the official openai SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import openai
import pytest

from megagate.fake import WORDS
from megagate.serve import free_port
from tests.conftest import GATEWAY_KEYS, FakeControl, Process, gateway_toml, start_gateway
from tests.e2e.test_key_rotation import ADMIN_TOKEN, admin_keys

pytestmark = pytest.mark.anyio

FIRST_BYTE, IDLE = 0.6, 1.0


@pytest.fixture(scope="module")
def fallback_gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    extra = f"""admin_token = "{ADMIN_TOKEN}"
[timeouts]
first_byte = {FIRST_BYTE}
read = {IDLE}
[rotation]
max_wait = 0
[fallbacks]
"configured-a" = ["model-b"]
[[upstreams]]
name = "dead"
base_url = "{dead}"
models = ["dead-*"]
keys = ["sk-mega-dead-upstream-key-0001"]
"""
    process = start_gateway(tmp_path_factory.mktemp("fallback"), gateway_toml(fake_upstream.url, extra=extra))
    yield process
    process.stop()


def sdk(gateway: Process) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


FAULTS: dict[str, dict[str, Any] | None] = {
    "500": {"status": 500},
    "429": {"status": 429, "retry_after": 1},
    "hang past first byte": {"hang": True},
    "connection refused": None,  # model "dead-a" is routed to an upstream nobody listens on
}
# upstream attempts before B answers: rotation retries 5xx/429/refused on all 3 keys (1 for the dead upstream's single
# key), a timeout is not retried on another key
ATTEMPTS = {"500": 4, "429": 4, "hang past first byte": 2, "connection refused": 2}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failing_model_is_answered_by_its_fallback(
    fallback_gateway: Process, fake: FakeControl, fault: str, stream: bool
) -> None:
    model = "dead-a" if FAULTS[fault] is None else f"model-a-{fault.replace(' ', '-')}-{stream}"
    if FAULTS[fault] is not None:
        fake.add_rule(FAULTS[fault], model=model)
    messages: Any = [{"role": "user", "content": "hi"}]
    extra = {"fallback_models": ["model-b"], "fallback_on_rate_limit": True}
    async with sdk(fallback_gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream, extra_body=extra
        )
        if stream:
            text, served = "", set()
            async for chunk in raw.parse():
                served.add(chunk.model)
                text += "".join(c.delta.content or "" for c in chunk.choices)
            assert served == {"model-b"} and text == " ".join(WORDS)
        else:
            completion = raw.parse()
            assert completion.model == "model-b" and completion.choices[0].message.content == " ".join(WORDS)
    assert raw.headers["x-megagate-model"] == "model-b"
    assert raw.headers["x-megagate-attempts"] == str(ATTEMPTS[fault])
    bodies = [r["body"] for r in fake.requests()]
    assert bodies[-1]["model"] == "model-b"
    assert all(not key.startswith("fallback_") for body in bodies for key in body)


async def test_the_configured_chain_applies(fallback_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 503}, model="configured-a")
    async with sdk(fallback_gateway) as client:
        completion = await client.chat.completions.create(
            model="configured-a", messages=[{"role": "user", "content": "x"}]
        )
    assert completion.model == "model-b"


async def test_no_fallback_on_rate_limit_when_switched_off(
    fallback_gateway: Process, fake: FakeControl, anyio_backend: str
) -> None:
    limited = f"limited-a-{anyio_backend}"  # its keys cool for a second: each loop gets its own model
    fake.add_rule({"status": 429, "retry_after": 1}, model=limited)
    async with sdk(fallback_gateway) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=limited,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"fallback_models": ["model-b"], "fallback_on_rate_limit": False},
            )
    assert caught.value.response.headers["retry-after"] == "1"
    assert {r["body"]["model"] for r in fake.requests()} == {limited}


async def test_an_upstream_400_is_never_retried(fallback_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"status": 400, "message": "context too long"}, model="strict-a")
    async with sdk(fallback_gateway) as client:
        with pytest.raises(openai.BadRequestError, match="context too long"):
            await client.chat.completions.create(
                model="strict-a", messages=[{"role": "user", "content": "x"}], extra_body={"fallback_models": ["b"]}
            )
    assert len(fake.requests()) == 1


@pytest.mark.parametrize("failure", [{"drop_after": 5}, {"error_after": 5}, {"stall_after": 5}])
async def test_a_stream_failing_after_five_events_ends_with_a_clear_error(
    fallback_gateway: Process, fake: FakeControl, failure: dict[str, Any]
) -> None:
    """A drop, an error event, or silence past the idle timeout: five deltas, then an error, never a hang."""
    fake.add_rule(failure, model="flaky")
    deltas: list[str] = []
    started = time.monotonic()
    async with sdk(fallback_gateway) as client:
        stream = await client.chat.completions.create(
            model="flaky", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                deltas += [c.delta.content or "" for c in chunk.choices if c.delta.content]
    assert len(deltas) == 5
    assert time.monotonic() - started < IDLE + 1
    async with sdk(fallback_gateway) as client:  # the gateway keeps serving
        assert (await client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "x"}])).choices


async def test_a_client_leaving_mid_stream_cancels_the_upstream_and_frees_the_key(
    fallback_gateway: Process, fake: FakeControl
) -> None:
    fake.add_rule({"chunk_delay": 0.05}, model="slow")
    async with sdk(fallback_gateway) as client:
        stream = await client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            break
        await stream.close()  # the SDK closes the HTTP response: the client has left
        left_at = time.monotonic()
    for _ in range(40):
        recorded = fake.requests()[-1]
        if recorded["disconnected_at"] is not None:
            break
        await anyio.sleep(0.05)
    assert recorded["disconnected_at"] is not None and recorded["disconnected_at"] - left_at < 1.0
    for _ in range(20):
        keys = msgspec.json.decode(admin_keys(fallback_gateway)[1])["data"]
        if all(k["in_flight"] == 0 for k in keys):
            break
        await anyio.sleep(0.05)
    assert all(k["in_flight"] == 0 for k in keys)


@pytest.fixture
def hedging_gateway(fake_upstream: Process, tmp_path: Path) -> Iterator[Process]:
    extra = "[hedging]\ndelay = 0.3\n"
    process = start_gateway(tmp_path, gateway_toml(fake_upstream.url, extra=extra))
    yield process
    process.stop()


async def test_hedging_bounds_ttfb_when_the_primary_stalls(hedging_gateway: Process, fake: FakeControl) -> None:
    fake.add_rule({"hang": True}, key=GATEWAY_KEYS[0])  # a fresh gateway's first request goes to the first key
    started = time.monotonic()
    async with sdk(hedging_gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        first_event_at = None
        async for _ in raw.parse():
            first_event_at = first_event_at or time.monotonic()
    assert first_event_at is not None and first_event_at - started < 0.3 + 0.7
    assert raw.headers["x-megagate-attempts"] == "2"
    stalled = [r for r in fake.requests() if r["key"] == GATEWAY_KEYS[0]]
    assert len(stalled) == 1
    for _ in range(20):  # the loser's upstream request is cancelled
        stalled = [r for r in fake.requests() if r["key"] == GATEWAY_KEYS[0]]
        if stalled[0]["disconnected_at"] is not None:
            break
        await anyio.sleep(0.05)
    assert stalled[0]["disconnected_at"] is not None
