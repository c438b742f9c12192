"""Several gateway processes on one Redis share every key's limits: no over-admission, no leaked slot.

Real processes: hypercorn with two workers plus a second gateway on another port, one redis-server, the fake
upstream recording how many requests each key has in flight at once and when each arrived.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import FakeControl, Process, RedisServer, start_gateway

pytestmark = pytest.mark.anyio

KEYS = [f"sk-mega-shared-key-{i:04d}" for i in range(7)]


def shared_config(fake: Process, redis: RedisServer, keys: list[dict[str, Any]], extra: str = "") -> str:
    inline = ", ".join("{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in key.items()) + " }" for key in keys)
    return f"""
access_log = false
[rotation]
max_wait = 20
{extra}
[pool]
store = "redis"
redis_url = "{redis.url}"
prefix = "shared-{time.monotonic_ns()}"
lease_ttl = 2

[[upstreams]]
name = "fake"
base_url = "{fake.url}/v1"
keys = [{inline}]
"""


async def ask(http: httpx.AsyncClient, url: str, stream: bool) -> int:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        data = await response.aread()
    if stream and b"[DONE]" not in data:
        return 599
    return response.status_code


async def test_two_workers_and_a_replica_never_over_admit(
    fake_upstream: Process, fake: FakeControl, redis_server: RedisServer, tmp_path: Path
) -> None:
    """200 concurrent requests (plain and streamed) over 7 keys of max_concurrency 3 and rpm 30, through three
    processes: the upstream never sees a key more than 3 at once or more than 30 times in the minute, and every
    request is served (capacity remains: each waits for a slot up to max_wait)."""
    keys = [{"key": k, "max_concurrency": 3, "rpm": 30} for k in KEYS]
    config = shared_config(fake_upstream, redis_server, keys)
    (tmp_path / "a").mkdir()
    workers = start_gateway(tmp_path / "a", config, "-w", "2")
    replica = start_gateway(tmp_path, config)
    fake.add_rule({"chunk_delay": 0.02, "length": 5})
    statuses: list[int] = []
    try:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http, anyio.create_task_group() as group:

            async def one(n: int) -> None:
                statuses.append(await ask(http, (workers, replica)[n % 2].url, stream=n % 3 == 0))

            for n in range(200):
                group.start_soon(one, n)
    finally:
        workers.stop()
        replica.stop()
    assert Counter(statuses) == {200: 200}
    stats, seen = fake.stats(), fake.requests()
    assert max(stats["peak_in_flight"][k] for k in KEYS) <= 3, stats["peak_in_flight"]
    per_key = Counter(r["key"] for r in seen)
    assert sum(per_key.values()) == 200 and max(per_key.values()) <= 30, per_key
    assert len({r["client_port"] for r in seen}) > 1


async def test_a_killed_gateway_frees_its_slot_within_the_lease_ttl(
    fake_upstream: Process, fake: FakeControl, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Process A holds the only slot in a long stream and is SIGKILLed: process B gets the key within the lease
    TTL (2 s). A client that leaves a stream frees its slot at once."""
    config = shared_config(fake_upstream, redis_server, [{"key": KEYS[0], "max_concurrency": 1}],
                           "max_attempts = 1")  # fmt: skip
    (tmp_path / "a").mkdir()
    a, b = start_gateway(tmp_path / "a", config), start_gateway(tmp_path, config)
    fake.add_rule({"chunk_delay": 0.5, "length": 40})
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with http.stream("POST", a.url + "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    break  # the stream is running on A: A holds the slot
                a.kill()  # the whole gateway, workers too, at once: it cannot release anything
            started = time.monotonic()
            fake.reset()
            fake.add_rule({"length": 2})
            assert await ask(http, b.url, stream=False) == 200  # waited for the dead lease to lapse
            assert time.monotonic() - started < 2 + 1.5
            # A client leaving mid-stream on B frees the slot at once: the next request does not wait for the TTL.
            fake.add_rule({"chunk_delay": 0.5, "length": 40})
            async with http.stream("POST", b.url + "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    break
            fake.reset()
            started = time.monotonic()
            assert await ask(http, b.url, stream=False) == 200
            assert time.monotonic() - started < 1.0
    finally:
        a.stop()
        b.stop()


async def test_a_budget_holds_across_two_workers_and_a_replica(
    fake_upstream: Process, fake: FakeControl, redis_server: RedisServer, tmp_path: Path
) -> None:
    """50 concurrent requests from one client, spread over a 2-worker gateway and a replica on one Redis, against a
    $0.10 daily budget: the spend never passes it (each reservation is its request's worst case, which the answer
    here reaches), and the rest are told `budget_exceeded`."""
    extra = ('[prices]\n"gpt-*" = { input = 10.0, output = 20.0 }\n'
             '[[clients]]\nname = "team-x"\nkey = "client-key-budget-e2e"\nbudget = { daily = 0.10 }\n')  # fmt: skip
    config = shared_config(fake_upstream, redis_server, [{"key": KEYS[0]}, {"key": KEYS[1]}], extra)
    (tmp_path / "a").mkdir()
    workers, replica = start_gateway(tmp_path / "a", config, "-w", "2"), start_gateway(tmp_path, config)
    fake.add_rule({"length": 1000})  # the answer uses its whole max_tokens: actual cost = the reservation
    body = {"model": "gpt-4", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": "Bearer client-key-budget-e2e"}
    try:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(n: int) -> httpx.Response:
                url = (workers if n % 2 else replica).url
                return await http.post(url + "/v1/chat/completions", json=body, headers=headers)

            answers: list[httpx.Response] = []
            async with anyio.create_task_group() as group:
                for n in range(50):
                    group.start_soon(lambda n=n: _append(answers, one(n)))
        ok = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(ok) + len(refused) == 50 and refused
        assert all(a.json()["error"]["code"] == "budget_exceeded" and a.headers.get("retry-after") for a in refused)
        spent = sum(float(a.headers["x-megagate-cost-usd"]) for a in ok)
        assert spent <= 0.10 and len(ok) == int(0.10 // (spent / len(ok)))  # as many as fit, no more
    finally:
        workers.stop()
        replica.stop()


async def _append(answers: list[httpx.Response], call: Any) -> None:
    answers.append(await call)
