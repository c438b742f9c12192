"""Budgets as clients meet them: 429 `budget_exceeded` in the route's envelope with a Retry-After until the reset,
or the cheaper model the client's `on_budget` names; held across gateways sharing Redis under concurrency, and
across a restart through the ledger."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from megagate.app import create_app
from megagate.config import config_from_mapping
from megagate.upstream.mock import MockResponse, MockTransport
from tests.conftest import RedisServer
from tests.inprocess import call

pytestmark = pytest.mark.anyio
KEY = "client-key-budget-0001"
HEADERS = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
# The prompt as megagate estimates it (7 tokens) + 1,000 completion tokens at $10 / $20 per million: $0.02007 an
# answer, its reservation's worst case exactly (max_tokens = 1000)
ANSWER = msgspec.json.encode({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "opus",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 1000, "total_tokens": 1007},
})  # fmt: skip
PRICES = {"opus": {"input": 10.0, "output": 20.0}, "mini": {"input": 0.1, "output": 0.2}}
ASK = {"model": "opus", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}


def settings(budget: float, *, on_budget: str = "reject", **more: Any) -> dict[str, Any]:
    return {
        "access_log": False,
        "usage": {"store": "off"},
        "prices": PRICES,
        "clients": [{"name": "team-a", "key": KEY, "budget": {"daily": budget}, "on_budget": on_budget}],
        "upstreams": [{"name": "up", "base_url": "http://upstream.test", "keys": ["sk-mega-budget-aaaa1111"]}],
        **more,
    }


def gateway_of(config: dict[str, Any]) -> Any:
    transport = MockTransport(lambda _: MockResponse(body=[ANSWER]))
    return create_app(config_from_mapping(config, environ={}), transport=transport), transport


async def test_over_budget_is_a_429_in_the_routes_envelope_with_the_reset() -> None:
    app, _ = gateway_of(settings(0.07))
    statuses = [(await call(app, body=ASK, headers=HEADERS)).status for _ in range(3)]
    assert statuses == [200, 200, 200]  # $0.0602 spent; the fourth's worst case would pass $0.07
    refused = await call(app, body=ASK, headers=HEADERS)
    error = msgspec.json.decode(refused.body)["error"]
    assert refused.status == 429 and error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
    assert "daily budget of client 'team-a' ($0.07)" in error["message"] and "resets in" in error["message"]
    assert 0 < int(refused.header(b"retry-after") or 0) <= 86400
    anthropic = await call(app, "/v1/messages", body=ASK, headers=HEADERS)
    assert anthropic.status == 429 and msgspec.json.decode(anthropic.body)["type"] == "error"  # Anthropic's envelope
    scrape = (await call(app, "/metrics", method="GET")).body.decode()
    assert 'megagate_budget_remaining_usd{budget="client:team-a",period="daily"} 0.00979' in scrape


async def test_on_budget_serves_the_cheaper_model_and_says_so() -> None:
    app, transport = gateway_of(settings(0.05, on_budget="mini"))
    assert [(await call(app, body=ASK, headers=HEADERS)).status for _ in range(2)] == [200, 200]
    cheaper = await call(app, body=ASK, headers=HEADERS)
    assert cheaper.status == 200 and cheaper.header(b"x-megagate-budget") == b"fallback"
    assert msgspec.json.decode(transport.requests[-1].body)["model"] == "mini"
    assert cheaper.header(b"x-megagate-model") == b"mini"


async def test_a_model_budget_holds_across_clients() -> None:
    config = settings(100.0, budgets={"op*": {"daily": 0.04}})
    app, _ = gateway_of(config)
    assert (await call(app, body=ASK, headers=HEADERS)).status == 200
    refused = await call(app, body=ASK, headers=HEADERS)
    assert refused.status == 429 and "daily budget of model 'op*'" in refused.body.decode()


async def test_fifty_concurrent_requests_on_two_gateways_sharing_redis_hold_the_budget(
    redis_server: RedisServer,
) -> None:
    prefix = secrets.token_hex(4)
    config = settings(0.10, pool={"store": "redis", "redis_url": redis_server.url, "prefix": prefix})
    gateways = [gateway_of(config)[0] for _ in range(2)]
    statuses: list[int] = []

    async def one(n: int) -> None:
        statuses.append((await call(gateways[n % 2], body=ASK, headers=HEADERS, within=10)).status)

    async with gateways[0].running(), gateways[1].running():
        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(one, n)
        assert statuses.count(200) == 4 and statuses.count(429) == 46  # $0.02007 each: a fifth would pass $0.10
        key = f"{{{prefix}}}:budget:client:team-a:{time.strftime('%Y-%m-%d', time.gmtime())}"
        spent = float(await gateways[0].redis.execute("HGET", key, "spent"))
    assert spent == pytest.approx(4 * 0.02007) and spent <= 0.10


async def test_a_restart_keeps_the_days_spend_through_the_ledger(tmp_path: Path) -> None:
    config = {**settings(0.07), "usage": {"path": str(tmp_path / "usage.db")}}
    first, _ = gateway_of(config)
    async with first.running():
        assert [(await call(first, body=ASK, headers=HEADERS)).status for _ in range(3)] == [200, 200, 200]
    again, _ = gateway_of(config)  # a new process: its book starts from the ledger
    async with again.running():
        assert (await call(again, body=ASK, headers=HEADERS)).status == 429
