"""What the shared (Redis) key pool costs, in one run: python -m benchmarks.shared_pool [--quick]

Columns: megagate with the in-memory pool (1 worker), with the Redis pool (1 worker), with the Redis pool and 2
workers. Steps: plain requests at c=1 (added latency of the two Redis round trips per request) and at c=64
(throughput and CPU per request). One-worker servers are pinned to core 0, the mock upstream, Redis and the load
generator to core 1; the 2-worker server may use both cores (and so competes with the load generator: on a 2-core
machine, 2 workers cannot reach 2x; the table says how close they come). All on 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import HERE, ROOT, cpu_seconds, load, pinned, start
from megagate.serve import free_port

STEPS = [("plain c=1", "plain", 1, 4.0, "bench"), ("plain c=64", "plain", 64, 5.0, "bench")]


def config(mock_port: int, redis_port: int | None) -> Path:
    path = Path(tempfile.mkdtemp()) / "bench.toml"
    pool = f'[pool]\nstore = "redis"\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n' if redis_port else ""
    path.write_text(f'access_log = false\n{pool}[[upstreams]]\nname = "mock"\n'
                    f'base_url = "http://127.0.0.1:{mock_port}"\nkeys = ["sk-bench-key-0001"]\n')  # fmt: skip
    return path


def gateway(port: int, config_path: Path, workers: int) -> subprocess.Popen[bytes]:
    env = {"MEGAGATE_CONFIG": str(config_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "hypercorn", "-c", str(ROOT / "hypercorn.toml"), "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--access-logfile", "", "megagate.app:app"]  # fmt: skip
    return start(pinned(0, args) if workers == 1 else args, port, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per step")
    quick = parser.parse_args().quick
    mock_port, redis_port = free_port(), free_port()
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    processes = [
        start(pinned(1, [sys.executable, "-m", "benchmarks.mock_upstream", str(mock_port)]), mock_port, env),
        start(pinned(1, ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"]),
              redis_port, env),
    ]  # fmt: skip
    columns = {"memory, 1 worker": (None, 1), "redis, 1 worker": (redis_port, 1), "redis, 2 workers": (redis_port, 2)}
    results: dict[str, dict[str, Any]] = {}
    try:
        for column, (redis, workers) in columns.items():
            port = free_port()
            server = gateway(port, config(mock_port, redis), workers)
            try:
                time.sleep(1.0)
                load(port, "plain", 8, 1.0, "bench")  # warm up: connections, scripts loaded
                for step, mode, concurrency, seconds, model in STEPS:
                    before = cpu_seconds(server.pid)
                    figures = load(port, mode, concurrency, 1.0 if quick else seconds, model)
                    figures["cpu_s"] = cpu_seconds(server.pid) - before
                    results.setdefault(step, {})[column] = figures
                    print(f"{step:<12} {column:<18} {figures['req_per_s']:8.0f} req/s  p50 {figures['p50_ms']:.2f} ms",
                          flush=True)  # fmt: skip
            finally:
                server.terminate()
                server.wait(10)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
    (HERE / "results-shared-pool.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(results))


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| step | figure | memory, 1 worker | redis, 1 worker | redis, 2 workers |", "|---|---|---|---|---|"]
    for step, row in results.items():
        memory, redis, two = row["memory, 1 worker"], row["redis, 1 worker"], row["redis, 2 workers"]
        lines.append(f"| {step} | req/s | {memory['req_per_s']:.0f} | {redis['req_per_s']:.0f} | "
                     f"{two['req_per_s']:.0f} ({two['req_per_s'] / redis['req_per_s']:.2f}x 1 worker) |")  # fmt: skip
        lines.append(f"| {step} | p50 ms | {memory['p50_ms']:.2f} | {redis['p50_ms']:.2f} "
                     f"(+{redis['p50_ms'] - memory['p50_ms']:.2f}) | {two['p50_ms']:.2f} |")  # fmt: skip
        cpu = [c["cpu_s"] / c["requests"] * 1e3 if c["requests"] else 0 for c in (memory, redis, two)]
        lines.append(f"| {step} | CPU per request ms | {cpu[0]:.2f} | {cpu[1]:.2f} (+{cpu[1] - cpu[0]:.2f}) | "
                     f"{cpu[2]:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
