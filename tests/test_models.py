"""The model list in process: merged from the upstreams, asked with a pool key (leased and returned), cached."""

from __future__ import annotations

import msgspec
import pytest

from megagate.upstream.mock import MockResponse
from tests.inprocess import KEYS, call, gateway

pytestmark = pytest.mark.anyio

LISTED = msgspec.json.encode({"object": "list", "data": [{"id": "gpt-4", "object": "model", "owned_by": "x"}]})


async def test_the_list_is_asked_with_a_leased_key_and_cached() -> None:
    app, transport = gateway([MockResponse(body=[LISTED])], models_cache_ttl=60)
    first = await call(app, "/v1/models", method="GET")
    second = await call(app, "/v1/models", method="GET")
    ids = [m["id"] for m in first.json()["data"]]
    assert first.status == 200 and ids == ["gpt-4", "openai-gpt-oss-120b"] and second.body == first.body
    assert (
        len(transport.requests) == 1 and transport.requests[0].header(b"authorization") == f"Bearer {KEYS[0]}".encode()
    )
    reports = await app.pools["up"].report()
    assert [r.in_flight for r in reports] == [0, 0] and reports[0].requests_last_minute == 1


async def test_a_refused_key_is_reported_to_the_pool_and_the_error_names_no_secret() -> None:
    refused = MockResponse(401, body=[f'{{"error":{{"message":"bad {KEYS[0]}"}}}}'.encode()])
    app, _ = gateway([refused])
    result = await call(app, "/v1/models", method="GET")
    assert result.status == 502 and KEYS[0] not in result.body.decode()
    assert (await app.pools["up"].report())[0].state == "disabled"


async def test_one_model_in_anthropics_format_for_an_anthropic_client() -> None:
    app, _ = gateway([MockResponse(body=[LISTED])])
    result = await call(app, "/v1/models/gpt-4", method="GET", headers=[(b"anthropic-version", b"2023-06-01")])
    assert result.json() == {"id": "gpt-4", "display_name": "gpt-4", "created_at": "1970-01-01T00:00:00Z",
                             "type": "model"}  # fmt: skip
