"""How many concurrent streams one core carries, and what each costs: python -m benchmarks.scale (or run --scale).

C = 256, 1,000 and 2,000 concurrent streams of 100 chunks at 100 ms per chunk (10 s each, as a slow LLM answer),
against the upstream directly, the aiohttp floor (the same passthrough on aiohttp's own server), the hypercorn
floor (a bare ASGI passthrough under the same hypercorn) and megagate (full default stack), in one run. Servers
on core 0, the mock and the load generator on core 1. Figures: chunks/s as a share of direct, TTFB p50/p99 added
over direct, CPU per chunk, RSS per open stream (RSS mid-run minus idle, over C). Prints progress, writes
benchmarks/results-scale.json and the chart benchmarks/scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks.run import HERE, ROOT, bench_config, cpu_seconds, pinned, rss_mib, start, start_servers
from megagate.serve import free_port

LEVELS = (256, 1000, 2000)
COLUMNS = ("aiohttp", "floor", "megagate")  # the aiohttp floor only where aiohttp is installed
NAMES = {"aiohttp": "aiohttp floor", "floor": "hypercorn floor"}
MODEL = "bench-100ms"


def _raise_fd_limit() -> None:
    """Every stream holds a socket in the load generator, two in the gateway and one in the mock."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def _load(port: int, concurrency: int, server_pid: int | None) -> dict[str, Any]:
    """One stream per client (each lasts 10 s); RSS sampled half way, while every stream is open."""
    args = pinned(1, [sys.executable, "-m", "benchmarks.loadgen", str(port), "stream", str(concurrency), "0.5", MODEL])
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(5.0)
    rss = rss_mib(server_pid, "VmRSS") if server_pid else 0.0
    out, _ = process.communicate(timeout=120)
    figures: dict[str, Any] = json.loads(out)
    figures["rss_open_mib"] = rss
    return figures


def run(levels: tuple[int, ...] = LEVELS) -> dict[str, Any]:
    _raise_fd_limit()
    mock_port = free_port()
    env = {**os.environ, "MOCK_PORT": str(mock_port), "MEGAGATE_CONFIG": str(bench_config(mock_port, "fast")),
           "PYTHONPATH": str(ROOT), "BENCH_TRANSPORT": "fast"}  # fmt: skip
    processes = [start(pinned(1, [sys.executable, "-m", "benchmarks.mock_upstream", str(mock_port)]), mock_port, env)]
    servers, server_ports = start_servers(env)
    processes += servers.values()
    ports = {"direct": mock_port, **server_ports}
    results: dict[str, Any] = {"levels": {}, "idle_mib": {}}
    try:
        time.sleep(1.0)
        results["idle_mib"] = {name: rss_mib(server.pid, "VmRSS") for name, server in servers.items()}
        for level in levels:
            row: dict[str, Any] = {}
            for column, port in ports.items():
                server = servers.get(column)
                before = cpu_seconds(server.pid) if server else 0.0
                figures = _load(port, level, server.pid if server else None)
                if server:
                    figures["cpu_s"] = cpu_seconds(server.pid) - before
                row[column] = figures
                print(f"[scale] C={level:<5} {column:<9} {figures['chunks_per_s']:8.0f} chunks/s  "
                      f"TTFB p50 {figures['ttfb_p50_ms']:.1f} p99 {figures['ttfb_p99_ms']:.1f} ms  "
                      f"errors {figures['errors']} incomplete {figures['incomplete']}", flush=True)  # fmt: skip
                time.sleep(1.0)
            results["levels"][str(level)] = row
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
    return results


def table(results: dict[str, Any]) -> str:
    head = "| C | column | x direct | TTFB p50 / p99 added ms | CPU per chunk µs | RSS per open stream KiB | errors |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for level, row in results["levels"].items():
        direct = row["direct"]
        for column in [c for c in COLUMNS if c in row]:
            f = row[column]
            share = f["chunks_per_s"] / direct["chunks_per_s"] if direct["chunks_per_s"] else 0
            added = (f["ttfb_p50_ms"] - direct["ttfb_p50_ms"], f["ttfb_p99_ms"] - direct["ttfb_p99_ms"])
            cpu = f["cpu_s"] / f["chunks"] * 1e6 if f["chunks"] else 0
            rss = (f["rss_open_mib"] - results["idle_mib"][column]) * 1024 / int(level)
            errors = f["errors"] + f["incomplete"]
            lines.append(f"| {level} | {column} | {share:.2f}x | +{added[0]:.1f} / +{added[1]:.1f} | {cpu:.1f} | "
                         f"{rss:.1f} | {errors} |")  # fmt: skip
    return "\n".join(lines)


def chart(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(level) for level in results["levels"]]
    figure, (share_axis, cpu_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    rows = [results["levels"][str(level)] for level in levels]
    for column in [c for c in COLUMNS if c in rows[0]]:
        share = [r[column]["chunks_per_s"] / r["direct"]["chunks_per_s"] for r in rows]
        cpu = [r[column]["cpu_s"] / max(1.0, r[column]["chunks"]) * 1e6 for r in rows]
        share_axis.plot(levels, share, marker="o", label=NAMES.get(column, column))
        cpu_axis.plot(levels, cpu, marker="o", label=NAMES.get(column, column))
    share_axis.set(title="chunks/s, x direct", xlabel="concurrent streams (100 x 100 ms)", ylim=(0, 1.1))
    cpu_axis.set(title="CPU per chunk (µs)", xlabel="concurrent streams (100 x 100 ms)", ylim=(0, None))
    share_axis.legend()
    figure.tight_layout()
    figure.savefig(HERE / "scale.png", dpi=110)


def main(levels: tuple[int, ...] = LEVELS) -> None:
    results = run(levels)
    (HERE / "results-scale.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(results))
    chart(results)
    print(f"\nchart: {HERE / 'scale.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="*", default=list(LEVELS))
    main(tuple(parser.parse_args().levels))
