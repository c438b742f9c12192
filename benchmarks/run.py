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


def aiohttp_floor(port: int) -> list[str] | None:
    """The aiohttp passthrough's command line, or None without aiohttp (the column is then left out)."""
    try:
        import aiohttp  # noqa: F401 -- only whether it is installed
    except ImportError:
        return None
    return [sys.executable, "-m", "benchmarks.floor_aiohttp", str(port)]


def start_servers(
    env: dict[str, str], worker_class: str = "asyncio", aiohttp: bool = True
) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, int]]:
    """The servers on core 0: the aiohttp floor (asyncio runs only, if installed), the hypercorn floor, megagate."""
    servers, ports = {}, {}
    command = aiohttp_floor(port := free_port()) if aiohttp and worker_class == "asyncio" else None
    if command is not None:
        servers["aiohttp"], ports["aiohttp"] = start(pinned(0, command), port, env), port
    for name, app in (("floor", "benchmarks.floor:app"), ("megagate", "megagate.app:app")):
        port = free_port()
        servers[name], ports[name] = start(pinned(0, hypercorn(app, port, worker_class)), port, env), port
    return servers, ports


USAGE_STORE = os.environ.get("MEGAGATE_BENCH_USAGE", "sqlite")  # the usage ledger: sqlite (the default) or off


def bench_config(mock_port: int, transport: str) -> Path:
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    ledger = config.parent / "usage.db"  # megagate's default ledger, written as in production, outside the repo
    config.write_text(
        f'transport = "{transport}"\n[usage]\nstore = "{USAGE_STORE}"\npath = "{ledger}"\n'
        f'[[upstreams]]\nname = "mock"\nbase_url = "http://127.0.0.1:{mock_port}"\nkeys = ["sk-bench-key-0001"]\n'
    )
    return config


def run(worker_class: str, steps: list[tuple[str, str, int, float, str]], transport: str = "fast") -> dict[str, Any]:
    mock_port = free_port()
    config = bench_config(mock_port, transport)
    env = {**os.environ, "MOCK_PORT": str(mock_port), "MEGAGATE_CONFIG": str(config), "PYTHONPATH": str(ROOT),
           "BENCH_TRANSPORT": transport}  # fmt: skip
    processes = [start(pinned(1, [sys.executable, "-m", "benchmarks.mock_upstream", str(mock_port)]), mock_port, env)]
    servers, server_ports = start_servers(env, worker_class, aiohttp=transport == "fast")
    processes += servers.values()
    ports = {"direct": mock_port, **server_ports}
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
    """The Markdown table: one column per server (the aiohttp floor when it ran), megagate against the others."""
    first = next(iter(results["steps"].values()))
    columns = [c for c in ("direct", "aiohttp", "floor", "megagate") if c in first]
    names = {"aiohttp": "aiohttp floor", "floor": "hypercorn floor"}
    lines = [f"| step | figure | {' | '.join(names.get(c, c) for c in columns)} | megagate vs |",
             "|---|---|" + "---|" * (len(columns) + 1)]  # fmt: skip

    def row(step: str, figure: str, cells: list[str], verdict: str = "") -> None:
        lines.append(f"| {step} | {figure} | {' | '.join(cells)} | {verdict} |")

    for step, figures in results["steps"].items():
        d, f, m = figures["direct"], figures["floor"], figures["megagate"]
        stream = "streams" in step
        count, unit, scale = ("chunks", "CPU per chunk µs", 1e6) if stream else ("requests", "CPU per request ms", 1e3)
        rate = "chunks_per_s" if stream else "req_per_s"
        row(step, rate.replace("_per_s", "/s"), [f"{figures[c][rate]:.0f}" for c in columns],
            f"{m[rate] / max(d[rate], 1):.2f}x direct")  # fmt: skip
        if stream:
            cells = [f"{figures[c]['ttfb_p50_ms']:.1f} / {figures[c]['ttfb_p99_ms']:.1f}" for c in columns]
            row(step, "TTFB p50 / p99 ms", cells, f"{m['ttfb_p50_ms'] / max(f['ttfb_p50_ms'], 1e-9):.2f}x floor p50")
        else:
            cells = [f"{figures[c]['p50_ms']:.2f} / {figures[c]['p99_ms']:.2f}" for c in columns]
            row(
                step,
                "p50 / p99 ms",
                cells,
                f"+{m['p50_ms'] - d['p50_ms']:.2f} ms p50 (floor +{f['p50_ms'] - d['p50_ms']:.2f})",
            )
        cells = ["" if c == "direct" else per(figures[c]["cpu_s"], figures[c][count], scale) for c in columns]
        ratio = (m["cpu_s"] / m[count]) / (f["cpu_s"] / f[count]) if f[count] and m[count] and f["cpu_s"] else 0
        row(step, unit, cells, f"{ratio:.2f}x floor")
        failed = [figures[c]["errors"] + figures[c]["incomplete"] for c in columns]
        row(step, "errors + incomplete", [str(n) for n in failed], "ok" if not any(failed) else "FAIL")
    idle, peak = results["rss_idle_mib"], results["rss_peak_mib"]
    row("all", "RSS idle / peak MiB", ["" if c == "direct" else f"{idle[c]:.0f} / {peak[c]:.0f}" for c in columns])
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
