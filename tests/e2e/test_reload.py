"""Hot reload of a serving gateway: SIGHUP to the worker (or POST /admin/reload) swaps the configuration between
requests, a stream in flight finishes untouched, and an invalid file changes nothing."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from megagate.core.secrets import key_id
from tests.conftest import FakeControl, Process, start_gateway

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-reload-5f2e"
KEY_A, KEY_B, KEY_C = "sk-mega-reload-key-aaaa1111", "sk-mega-reload-key-bbbb2222", "sk-mega-reload-key-cccc3333"


def config(fake: Process, keys: list[str], chain: list[str]) -> str:
    return f"""admin_token = "{ADMIN}"
[fallbacks]
"m1" = {json.dumps(chain)}
[[upstreams]]
name = "fake"
base_url = "{fake.url}/v1"
keys = {json.dumps(keys)}
"""


def worker_of(process: Process) -> int:
    """hypercorn's worker: the child of the parent process that `start_gateway` ran (not multiprocessing's
    resource tracker, its other child)."""
    pid = process.popen.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in command:
            return int(child)
    raise AssertionError("no hypercorn worker found")


async def wait_for(process: Process, text: str, count: int = 1) -> None:
    with anyio.fail_after(10):
        while process.output().count(text) < count:
            await anyio.sleep(0.05)


async def test_sighup_reloads_without_dropping_a_stream(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path, config(fake_upstream, [KEY_A, KEY_B], ["m2"]))
    path = next(tmp_path.glob("megagate-*.toml"))
    worker = worker_of(gateway)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    fake.add_rule({"chunk_delay": 0.1, "length": 20}, model="slow")
    streamed: list[bytes] = []
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http, anyio.create_task_group() as group:

            async def slow_stream() -> None:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    streamed.extend([chunk async for chunk in response.aiter_bytes()])

            group.start_soon(slow_stream)
            await anyio.sleep(0.5)  # the stream is running on the old configuration
            path.write_text(config(fake_upstream, [KEY_B, KEY_C], ["m3"]))
            os.kill(worker, signal.SIGHUP)
            await wait_for(gateway, "configuration reloaded")
            fake.add_rule({"status": 500}, model="m1")
            answers = [await http.post("/v1/chat/completions", json={**body, "model": m, "stream": False})
                       for m in ["gpt-4"] * 6 + ["m1"]]  # fmt: skip
        stream = b"".join(streamed)
        assert stream.endswith(b"data: [DONE]\n\n") and stream.count(b'"content"') >= 20 and b"error" not in stream
        assert all(a.status_code == 200 for a in answers)
        assert answers[-1].headers["x-megagate-model"] == "m3"  # the new chain
        after = [r for r in fake.requests() if r["body"]["model"] != "slow"]
        assert Counter(r["key"] for r in after if r["body"]["model"] == "gpt-4") == {KEY_B: 3, KEY_C: 3}
        assert KEY_A not in [r["key"] for r in after]
        assert "fake: key key-" in gateway.output() and "removed" in gateway.output()
        assert Path(f"/proc/{worker}").exists()  # the same worker: nothing was restarted
        # An invalid file changes nothing and says why, on SIGHUP and on POST /admin/reload.
        path.write_text(config(fake_upstream, [KEY_B, KEY_C], ["m3"]).replace("keys =", "keys = 7 #"))
        os.kill(worker, signal.SIGHUP)
        await wait_for(gateway, "reload refused")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            refused = await http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
            still = await http.post("/v1/chat/completions", json={**body, "model": "gpt-4", "stream": False})
        assert refused.status_code == 400 and refused.json()["reloaded"] is False
        assert "upstreams[0].keys" in refused.json()["error"] and still.status_code == 200
        assert fake.requests()[-1]["key"] in (KEY_B, KEY_C)
        for secret in (KEY_A, KEY_B, KEY_C, ADMIN):
            assert secret not in gateway.output()
    finally:
        gateway.stop()


async def test_admin_reload_reaches_every_worker(fake_upstream: Process, tmp_path: Path) -> None:
    """With two workers the route reaches one of them; it reloads and passes the reload on to its sibling."""
    gateway = start_gateway(tmp_path, config(fake_upstream, [KEY_A], ["m2"]), "-w", "2")
    path = next(tmp_path.glob("megagate-*.toml"))
    admin = {"authorization": f"Bearer {ADMIN}"}
    try:
        await wait_for(gateway, "Running on", 2)
        path.write_text(config(fake_upstream, [KEY_B, KEY_C], ["m3"]))
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            answer = await http.post("/admin/reload", headers=admin)
        assert answer.status_code == 200 and answer.json()["workers"] == 2
        await wait_for(gateway, "configuration reloaded", 2)
        seen = set()
        for _ in range(16):  # fresh connections: the kernel spreads them over both workers
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                keys = (await http.get("/admin/keys", headers=admin)).json()["data"]
            seen.add(frozenset(k["id"] for k in keys))
        assert seen == {frozenset({key_id(KEY_B), key_id(KEY_C)})}
    finally:
        gateway.stop()


async def test_watch_reloads_when_the_file_changes(fake_upstream: Process, fake: FakeControl, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "watch = true\n" + config(fake_upstream, [KEY_A], ["m2"]))
    path = next(tmp_path.glob("megagate-*.toml"))
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    try:
        path.write_text("watch = true\n" + config(fake_upstream, [KEY_B], ["m2"]))
        await wait_for(gateway, "configuration reloaded")  # no signal, no request: the worker saw the file change
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert fake.requests()[-1]["key"] == KEY_B
        path.write_text("watch = true\n" + config(fake_upstream, [KEY_B], ["m2"]).replace("keys =", "keys = 7 #"))
        await wait_for(gateway, "reload refused")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert fake.requests()[-1]["key"] == KEY_B  # the invalid file changed nothing
    finally:
        gateway.stop()
