"""Profile megagate's worker under one benchmark step: python -m benchmarks.profile [--step NAME] [-k CLASS]

Starts the mock upstream and megagate as `benchmarks.run` does (same pinning), runs the step's load, and samples the
serving process with py-spy (`pip install py-spy`; needs ptrace rights) for the whole step. Prints the functions with
the most own time and keeps the folded stacks in benchmarks/profile/ (for flamegraph.pl or speedscope).
All on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from benchmarks.run import HERE, ROOT, STEPS, bench_config, descendants, hypercorn, load, pinned, start
from megagate.serve import free_port


def worker_pid(parent: int) -> int:
    """hypercorn's serving process: the deepest descendant (the worker is a child of the parent process)."""
    return descendants(parent)[-1]


def own_time(folded: Path, top: int) -> list[tuple[float, str]]:
    """Share of samples whose innermost frame is each function (py-spy's folded format: `a;b;c count`)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf] += int(count)
        total += int(count)
    return [(100 * n / total, name) for name, n in counts.most_common(top)] if total else []


def main() -> None:
    names = [step[0] for step in STEPS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", default="256 streams x 10 ms", choices=names)
    parser.add_argument("--worker-class", "-k", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        sys.exit("py-spy is not installed: pip install py-spy")
    _, mode, concurrency, seconds, model = STEPS[names.index(args.step)]
    mock_port, gate_port = free_port(), free_port()
    config = bench_config(mock_port, "fast")
    env = {**os.environ, "MOCK_PORT": str(mock_port), "MEGAGATE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    mock = start(pinned(1, [sys.executable, "-m", "benchmarks.mock_upstream", str(mock_port)]), mock_port, env)
    gateway = start(pinned(0, hypercorn("megagate.app:app", gate_port, args.worker_class)), gate_port, env)
    out = HERE / "profile"
    out.mkdir(exist_ok=True)
    folded = out / f"{args.step.replace(' ', '')}-{args.worker_class}.folded"
    try:
        pid = worker_pid(gateway.pid)
        record = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
        spy = subprocess.Popen([*record, "--format", "raw", "--output", str(folded)], stdout=subprocess.DEVNULL)
        loader = threading.Thread(target=load, args=(gate_port, mode, concurrency, seconds, model))
        loader.start()
        spy.wait(seconds + 30)
        loader.join()
    finally:
        for process in (gateway, mock):
            process.terminate()
            process.wait(10)
    print(f"{args.step}, hypercorn -k {args.worker_class}: share of samples by innermost function")
    for share, name in own_time(folded, args.top):
        print(f"{share:5.1f}%  {name}")
    print(f"folded stacks: {folded}")


if __name__ == "__main__":
    main()
