"""Load-test megagate against direct and a bare passthrough floor, in one run: python -m benchmarks.run

Starts the mock upstream, the floor and megagate (hypercorn, one worker, same settings), pins the servers to core 0
and the mock + load generator to core 1 (when taskset exists), runs every step against the three columns, and prints
a Markdown table; raw results go to benchmarks/results.json. Everything is on 127.0.0.1 and bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from megagate.serve import free_port

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
# (name, mode, concurrency, seconds, model)
STEPS = [
    ("plain c=1", "plain", 1, 3.0, "bench"),
    ("plain c=64", "plain", 64, 4.0, "bench"),
    ("64 streams x 0 ms", "stream", 64, 3.0, "bench"),
    ("256 streams x 0 ms", "stream", 256, 3.0, "bench"),
    ("64 streams x 10 ms", "stream", 64, 4.0, "bench-10ms"),
    ("256 streams x 10 ms", "stream", 256, 4.0, "bench-10ms"),
]


def pinned(core: int, args: list[str]) -> list[str]:
    return (
        ["taskset", "-c", str(core), *args]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else args
    )


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in children:
            found += descendants(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in descendants(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_mib(pid: int, field: str) -> float:
    """The largest VmRSS / VmHWM among the process tree (the worker is a child of hypercorn's parent)."""
    best = 0
    for p in descendants(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                best = max(best, int(line.split()[1]))
    return best / 1024


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def start(args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return process


def load(port: int, mode: str, concurrency: int, seconds: float, model: str) -> dict[str, Any]:
    args = pinned(
        1, [sys.executable, "-m", "benchmarks.loadgen", str(port), mode, str(concurrency), str(seconds), model]
    )
    output = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return dict(json.loads(output))


def hypercorn(app: str, port: int, worker_class: str) -> list[str]:
    return [sys.executable, "-m", "hypercorn", "-c", str(ROOT / "hypercorn.toml"), "-w", "1", "-k", worker_class,
            "-b", f"127.0.0.1:{port}", "--access-logfile", "", app]  # fmt: skip


def bench_config(mock_port: int, transport: str) -> Path:
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    config.write_text(
        f'transport = "{transport}"\n[[upstreams]]\nname = "mock"\nbase_url = "http://127.0.0.1:{mock_port}"\n'
        'keys = ["sk-bench-key-0001"]\n'
    )
    return config


def run(worker_class: str, steps: list[tuple[str, str, int, float, str]], transport: str = "fast") -> dict[str, Any]:
    mock_port, floor_port, gate_port = free_port(), free_port(), free_port()
    config = bench_config(mock_port, transport)
    env = {**os.environ, "MOCK_PORT": str(mock_port), "MEGAGATE_CONFIG": str(config), "PYTHONPATH": str(ROOT),
           "BENCH_TRANSPORT": transport}  # fmt: skip
    processes = [start(pinned(1, [sys.executable, "-m", "benchmarks.mock_upstream", str(mock_port)]), mock_port, env)]
    servers = {
        "floor": start(pinned(0, hypercorn("benchmarks.floor:app", floor_port, worker_class)), floor_port, env),
        "megagate": start(pinned(0, hypercorn("megagate.app:app", gate_port, worker_class)), gate_port, env),
    }
    processes += servers.values()
    ports = {"direct": mock_port, "floor": floor_port, "megagate": gate_port}
    results: dict[str, Any] = {"steps": {}, "rss_idle_mib": {}, "rss_peak_mib": {}}
    try:
        time.sleep(1.0)
        for name, server in servers.items():
            results["rss_idle_mib"][name] = rss_mib(server.pid, "VmRSS")
        for step, mode, concurrency, seconds, model in steps:
            row: dict[str, Any] = {}
            for column, port in ports.items():
                server = servers.get(column)
                before = cpu_seconds(server.pid) if server else 0.0
                figures = load(port, mode, concurrency, seconds, model)
                if server:
                    figures["cpu_s"] = cpu_seconds(server.pid) - before
                row[column] = figures
                print(f"[{worker_class}/{transport}] {step:<22} {column:<9} {figures['req_per_s']:8.0f} req/s "
                      f"{figures['chunks_per_s']:9.0f} chunks/s  errors {figures['errors']} "
                      f"incomplete {figures['incomplete']}", file=sys.stderr, flush=True)  # fmt: skip
            results["steps"][step] = row
        for name, server in servers.items():
            results["rss_peak_mib"][name] = rss_mib(server.pid, "VmHWM")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    return results


def per(value: float, count: float, scale: float) -> str:
    return f"{value / count * scale:.2f}" if count else "n/a"


def table(results: dict[str, Any]) -> str:
    lines = ["| step | figure | direct | floor | megagate | megagate vs |", "|---|---|---|---|---|---|"]
    for step, row in results["steps"].items():
        d, f, m = row["direct"], row["floor"], row["megagate"]
        if "streams" in step:
            lines.append(
                f"| {step} | chunks/s | {d['chunks_per_s']:.0f} | {f['chunks_per_s']:.0f} | "
                f"{m['chunks_per_s']:.0f} | {m['chunks_per_s'] / max(d['chunks_per_s'], 1):.2f}x direct |"
            )
            lines.append(
                f"| {step} | TTFB p50 / p99 ms | {d['ttfb_p50_ms']:.1f} / {d['ttfb_p99_ms']:.1f} | "
                f"{f['ttfb_p50_ms']:.1f} / {f['ttfb_p99_ms']:.1f} | {m['ttfb_p50_ms']:.1f} / {m['ttfb_p99_ms']:.1f} | |"
            )
            cf, cm = per(f["cpu_s"], f["chunks"], 1e6), per(m["cpu_s"], m["chunks"], 1e6)
            ratio = (m["cpu_s"] / m["chunks"]) / (f["cpu_s"] / f["chunks"]) if f["chunks"] and m["chunks"] else 0
            lines.append(f"| {step} | CPU per chunk µs | | {cf} | {cm} | {ratio:.2f}x floor |")
        else:
            lines.append(
                f"| {step} | req/s | {d['req_per_s']:.0f} | {f['req_per_s']:.0f} | {m['req_per_s']:.0f} | "
                f"{m['req_per_s'] / max(d['req_per_s'], 1):.2f}x direct |"
            )
            lines.append(
                f"| {step} | p50 / p99 ms | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | {f['p50_ms']:.2f} / "
                f"{f['p99_ms']:.2f} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} | +{m['p50_ms'] - d['p50_ms']:.2f} ms p50 |"
            )
            cf, cm = per(f["cpu_s"], f["requests"], 1e3), per(m["cpu_s"], m["requests"], 1e3)
            ratio = (
                (m["cpu_s"] / m["requests"]) / (f["cpu_s"] / f["requests"]) if f["requests"] and m["requests"] else 0
            )
            lines.append(f"| {step} | CPU per request ms | | {cf} | {cm} | {ratio:.2f}x floor |")
        errors = sum(row[c]["errors"] + row[c]["incomplete"] for c in row)
        failed = [c["errors"] + c["incomplete"] for c in (d, f, m)]
        verdict = "ok" if errors == 0 else "FAIL"
        lines.append(f"| {step} | errors + incomplete | {failed[0]} | {failed[1]} | {failed[2]} | {verdict} |")
    idle, peak = results["rss_idle_mib"], results["rss_peak_mib"]
    lines.append(f"| all | RSS idle / peak MiB | | {idle['floor']:.0f} / {peak['floor']:.0f} | "
                 f"{idle['megagate']:.0f} / {peak['megagate']:.0f} | |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", "-k", action="append", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--transport", "-t", action="append", choices=["fast", "httpcore"],
                        help="upstream transport for floor and megagate (default: fast)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 s per step (smoke run)")
    parser.add_argument("--scale", action="store_true", help="then the C = 256 / 1,000 / 2,000 streams rows")
    args = parser.parse_args()
    steps = [(s[0], s[1], s[2], 1.0 if args.quick else s[3], s[4]) for s in STEPS]
    everything: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "runs": {},
    }
    for worker_class in args.worker_class or ["asyncio"]:
        for transport in args.transport or ["fast"]:
            label = worker_class if transport == "fast" else f"{worker_class}, transport = {transport}"
            everything["runs"][label] = run(worker_class, steps, transport)
    (HERE / "results.json").write_text(json.dumps(everything, indent=1))
    print(f"\n{everything['machine']}, {everything['date']}")
    for worker_class, results in everything["runs"].items():
        print(f"\n### hypercorn -k {worker_class}\n\n{table(results)}")
    if args.scale:
        from benchmarks import scale

        scale.main()


if __name__ == "__main__":
    main()
