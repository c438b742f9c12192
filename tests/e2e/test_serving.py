"""Serving megagate: hypercorn's trio worker, a bad config failing in one line, and the demo command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import openai

from megagate.serve import free_port
from tests.conftest import HYPERCORN_TOML, FakeControl, Process, gateway_toml, start_gateway


def test_trio_worker_serves_plain_and_stream(fake_upstream: Process, fake: FakeControl, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url), "-k", "trio")
    try:
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        assert sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]).choices
        stream = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.startswith("megagate relays")
    finally:
        gateway.stop()


def test_bad_config_fails_at_start_up_with_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[upstreams]]\nname = "x"\nbase_url = "http://127.0.0.1:1"\nmax_connections = "many"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "-c",
            str(HYPERCORN_TOML),
            "-b",
            f"127.0.0.1:{free_port()}",
            "megagate.app:app",
        ],
        env={**os.environ, "MEGAGATE_CONFIG": str(config)},
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    # Under bare hypercorn the worker stops by itself after our line (hypercorn then adds its own traceback of the
    # lifespan failure and exits 0); `megagate serve` checks first and prints only the line.
    output = result.stdout + result.stderr
    assert "megagate: bad configuration: upstreams[0].max_connections: Expected `int | null`, got `str`" in output
    serve = subprocess.run(
        [sys.executable, "-m", "megagate", "serve", "--bind", f"127.0.0.1:{free_port()}"],
        env={**os.environ, "MEGAGATE_CONFIG": str(config)},
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert serve.returncode == 2
    assert serve.stderr.strip() == (
        "megagate: bad configuration: upstreams[0].max_connections: Expected `int | null`, got `str`"
    )


def test_demo_streams_an_answer_with_no_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "megagate", "demo", "--once", "--port", str(free_port())],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MEGALLM", "MEGAGATE"))},
    )
    assert result.returncode == 0, result.stderr
    assert "megagate relays every token" in result.stdout
    _, _, summary = result.stdout.partition("\n\n[")
    assert "request_id" not in result.stdout + result.stderr  # no log line inside (or around) the streamed text
    assert "events in" in summary and "upstream attempt" in summary


def test_serve_without_client_keys_warns_once_and_binds_locally(fake_upstream: Process, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MEGALLM_API_KEYS": "sk-mega-serve-test-0001", "MEGALLM_BASE_URL": fake_upstream.url}
    env.pop("MEGAGATE_CONFIG", None)
    env.pop("MEGAGATE_CLIENT_KEYS", None)
    server = Process(
        [sys.executable, "-m", "megagate", "serve", "--bind", f"127.0.0.1:{port}"],
        port,
        tmp_path / "serve.log",
        env,
        cwd=tmp_path,
    )  # fmt: skip -- its usage ledger lands there
    try:
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]).choices
    finally:
        server.stop()
    warnings = [line for line in server.output().splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no client keys configured" in warnings[0] and "127.0.0.1" in warnings[0]
    assert "sk-mega-serve-test-0001" not in server.output()


def test_serve_with_two_workers_and_the_memory_pool_warns_that_limits_are_per_worker(
    fake_upstream: Process, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "MEGALLM_API_KEYS": "sk-mega-serve-test-0002", "MEGALLM_BASE_URL": fake_upstream.url,
           "MEGAGATE_CLIENT_KEYS": "ci:client-key-serve-0002"}  # fmt: skip
    env.pop("MEGAGATE_CONFIG", None)
    env.pop("MEGAGATE_REDIS_URL", None)
    command = [sys.executable, "-m", "megagate", "serve", "--bind", f"127.0.0.1:{port}", "-w", "2"]
    server = Process(command, port, tmp_path / "serve.log", env, cwd=tmp_path)
    server.stop()
    warnings = [line for line in server.output().splitlines() if "warning" in line]
    assert len(warnings) == 1 and "2 workers with the in-memory key pool" in warnings[0]


def test_the_curl_line_the_demo_prints_streams_when_pasted_into_a_shell(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGALLM", "MEGAGATE"))}
    demo = Process([sys.executable, "-m", "megagate", "demo", "--port", str(port)], port, tmp_path / "demo.log", env)
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops it." not in demo.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        printed = next(line for line in demo.log.read_text().splitlines() if line.startswith("$ curl"))
        pasted = subprocess.run(["bash", "-c", printed[2:]], capture_output=True, text=True, timeout=30, check=False)
    finally:
        demo.stop()
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.count("data: {") > 3 and pasted.stdout.rstrip().endswith("data: [DONE]"), pasted.stdout
