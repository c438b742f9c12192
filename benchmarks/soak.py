"""A soak: python -m benchmarks.soak [--minutes 10] [--streams 200]

megagate (one hypercorn worker, full default stack, an admin token) in front of the fake upstream streaming at
25 ms per chunk; `streams` clients (`soak_load.py`: raw asyncio protocols, in a process of their own) loop over
streamed requests, some leaving mid-stream, some to models the fake breaks (a dropped connection, 429s, 5xx), plus
plain requests. Every 30 s it samples the gateway's RSS, open file
descriptors, in-flight count per key (`/admin/keys`) and event-loop lag (the time `/healthz` takes). It passes when
RSS grows less than 10 % from minute 2 to the end, no descriptors leak, every key is back to 0 in flight, no request
hung, and every failed stream ended with its error event. Results go to benchmarks/results-soak.json, the chart of
RSS and descriptors over time to benchmarks/soak.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from benchmarks.run import HERE, ROOT, pinned, rss_mib, start
from benchmarks.soak_load import FAULTS, HUNG_AFTER
from megagate.serve import free_port

ADMIN = "soak-admin-token"
KEYS = [f"sk-soak-key-{i:04d}" for i in range(4)]


def fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in _tree(pid))


def _tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += _tree(int(child))
    return found


async def sample(http: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    started = time.perf_counter()
    await http.get("/healthz")
    lag = time.perf_counter() - started
    keys = (await http.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})).json()["data"]
    return {"at": time.monotonic(), "rss_mib": rss_mib(pid, "VmRSS"), "fds": fds(pid), "lag_ms": lag * 1000,
            "in_flight": {k["id"]: k["in_flight"] for k in keys}}  # fmt: skip


async def soak(minutes: float, streams: int) -> dict[str, Any]:
    fake_port, gate_port = free_port(), free_port()
    config = Path(tempfile.mkdtemp()) / "soak.toml"
    config.write_text(f'admin_token = "{ADMIN}"\naccess_log = false\n[rotation]\nmax_wait = 1\n'
                      f'[[upstreams]]\nname = "fake"\nbase_url = "http://127.0.0.1:{fake_port}"\n'
                      f"keys = {json.dumps(KEYS)}\n")  # fmt: skip
    env = {**os.environ, "MEGAGATE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    fake = start(pinned(1, [sys.executable, "-m", "megagate.fake", "--port", str(fake_port), "--tps", "40",
                            "--length", "40"]), fake_port, env)  # fmt: skip
    gateway = start(pinned(0, [sys.executable, "-m", "hypercorn", "-c", str(ROOT / "hypercorn.toml"), "-b",
                               f"127.0.0.1:{gate_port}", "megagate.app:app"]), gate_port, env)  # fmt: skip
    samples: list[dict[str, Any]] = []
    tally_file = Path(tempfile.mkdtemp()) / "tally.json"
    load: subprocess.Popen[str] | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fake_port}") as control:
            for model, fault in FAULTS.items():
                await control.post("/_fake/rules", json={"fault": fault, "model": model})
        # The load runs in its own process on raw asyncio protocols (`soak_load.py`): an httpx client with 200
        # streams on the core it shares with the fake counted its own pool's queueing as hung requests.
        load = _start_load(gate_port, streams, minutes * 60, tally_file)
        deadline = time.monotonic() + minutes * 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gate_port}", timeout=60) as probe:
            while time.monotonic() < deadline:
                samples.append(await sample(probe, gateway.pid))
                tally = _progress(tally_file)
                print(f"[soak] {samples[-1]['rss_mib']:.1f} MiB, {samples[-1]['fds']} fds, lag "
                      f"{samples[-1]['lag_ms']:.1f} ms, {tally}", flush=True)  # fmt: skip
                await anyio.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            out, _ = await anyio.to_thread.run_sync(lambda: load.communicate(timeout=HUNG_AFTER + 30))
            await anyio.sleep(2.0)  # let the last releases land
            samples.append(await sample(probe, gateway.pid))
    finally:
        for process in (load, gateway, fake):
            if process is not None and process.poll() is None:
                process.terminate()
    return verdict(samples, json.loads(out), minutes)


def _progress(tally_file: Path) -> dict[str, Any]:
    """The load's running tally, for the progress line ({} before its first write)."""
    return json.loads(tally_file.read_text()) if tally_file.exists() else {}


def _start_load(port: int, clients: int, seconds: float, tally_file: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "benchmarks.soak_load", str(port), str(clients), str(seconds), str(tally_file)]
    return subprocess.Popen(pinned(1, args), cwd=ROOT, stdout=subprocess.PIPE, text=True)


def verdict(samples: list[dict[str, Any]], tally: dict[str, int], minutes: float) -> dict[str, Any]:
    # Growth is judged under the same load: from the sample at minute 2 (or the middle one of a short run) to the
    # last one taken while the clients ran; the very last sample, after they stopped, must show nothing in flight.
    loaded, after = samples[:-1], samples[-1]
    start_at = loaded[0]["at"]
    base = next((s for s in loaded if s["at"] - start_at >= 120), loaded[len(loaded) // 2])
    end = loaded[-1]
    # Descriptors swing with connections opening and closing: a leak shows as the later samples' median above the
    # earlier ones'.
    steady = [s["fds"] for s in loaded if s["at"] >= base["at"]]
    half = len(steady) // 2
    early, late = sorted(steady[: half or 1])[(half or 1) // 2], sorted(steady[half:])[len(steady[half:]) // 2]
    checks = {
        "rss growth < 10 % from minute 2": end["rss_mib"] < base["rss_mib"] * 1.10,
        "no fd growth": late <= early * 1.10 + 20,
        "every key back to 0 in flight": all(v == 0 for v in after["in_flight"].values()),
        "no hung request": tally["hung"] == 0,
        "every failed stream ended with its error event": tally["cut_streams"] == 0,
    }
    return {"minutes": minutes, "tally": tally, "samples": samples, "checks": checks, "passed": all(checks.values())}


def chart(result: dict[str, Any]) -> None:
    """benchmarks/soak.png: RSS and open descriptors over the run, one point per sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [(s["at"] - samples[0]["at"]) / 60 for s in samples]
    figure, (rss_axis, fd_axis) = plt.subplots(1, 2, figsize=(9, 3))
    rss_axis.plot(minutes, [s["rss_mib"] for s in samples], marker="o")
    rss_axis.set(title="gateway RSS (MiB)", xlabel="minutes", ylim=(0, None))
    fd_axis.plot(minutes, [s["fds"] for s in samples], marker="o")
    fd_axis.set(title="open file descriptors", xlabel="minutes", ylim=(0, None))
    figure.tight_layout()
    figure.savefig(HERE / "soak.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    result = anyio.run(soak, args.minutes, args.streams)
    (HERE / "results-soak.json").write_text(json.dumps(result, indent=1))
    chart(result)
    for check, ok in result["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    print(json.dumps(result["tally"]))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
