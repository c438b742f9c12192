"""A SIGKILLed hypercorn parent (the OOM killer, a container's hard stop) leaves no worker behind: each worker
notices, lets its stream in flight finish, and exits, so a restarted megagate binds the same port."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import processes
from tests.conftest import FakeControl, Process, gateway_toml, start_gateway

SERVERS = {
    "hypercorn": lambda worker_class: ["-w", "2", "-k", worker_class],  # bare hypercorn -c hypercorn.toml
    "megagate serve": lambda worker_class: ["-w", "2", "--worker-class", worker_class],
}


def start_serve(tmp: Path, config_toml: str, *args: str) -> Process:
    from megagate.serve import free_port

    port = free_port()
    config = tmp / f"megagate-{port}.toml"
    config.write_text(config_toml)
    env = {**os.environ, "MEGAGATE_CONFIG": str(config)}
    command = [sys.executable, "-m", "megagate", "serve", "--bind", f"127.0.0.1:{port}", *args]
    return Process(command, port, tmp / f"serve-{port}.log", env, cwd=tmp)  # the ledger file lands in tmp


def workers_of(parent: Process, count: int) -> list[int]:
    """hypercorn's spawned workers (multiprocessing's resource tracker left out), once `count` of them run."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [p for p in processes.children(parent.popen.pid) if "spawn_main" in processes.command_line(p)]
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"hypercorn did not start {count} workers: {processes.children(parent.popen.pid)}")


@pytest.mark.parametrize(("server", "worker_class"), [("hypercorn", "asyncio"), ("megagate serve", "trio")])
def test_workers_leave_when_their_parent_is_killed_and_the_port_is_free_again(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path, server: str, worker_class: str
) -> None:
    config = gateway_toml(fake_upstream.url)
    args = SERVERS[server](worker_class)
    gateway = start_gateway(tmp_path, config, *args) if server == "hypercorn" else start_serve(tmp_path, config, *args)
    restarted: Process | None = None
    try:
        workers = workers_of(gateway, 2)
        fake.add_rule({"chunk_delay": 0.1, "length": 20})  # a stream of about 2 s, in flight across the kill
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        url, close = gateway.url + "/v1/chat/completions", {"connection": "close"}  # no idle keep-alive to wait on
        with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body, headers=close) as stream:
            chunks = stream.iter_bytes()
            received = next(chunks)
            os.kill(gateway.popen.pid, signal.SIGKILL)  # the parent alone: its workers are orphaned
            killed = time.monotonic()
            received += b"".join(chunks)
        assert received.rstrip().endswith(b"data: [DONE]"), received[-200:]  # the stream in flight completed
        assert b"megagate_error" not in received and b'"error"' not in received
        left = processes.wait_gone(workers, timeout=8)
        assert not left, f"orphaned workers still running: {[processes.command_line(p) for p in left]}"
        assert time.monotonic() - killed < 8
        gateway.kill()  # reaps the parent (nothing else is left in its group)
        assert gateway.output().count("is gone: this worker") == 2  # each worker said why it left
        (tmp_path / "restart").mkdir()
        restarted = start_gateway(tmp_path / "restart", config, port=gateway.port)  # the same port binds again
        assert httpx.get(restarted.url + "/healthz", timeout=10).status_code == 200
    finally:
        gateway.kill()
        if restarted is not None:
            restarted.stop()
