"""What runs on this machine, read from /proc: the suite's own processes (found by a mark in their environment, which
survives reparenting to PID 1) and a process's children."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

SUITE_MARK = "PYTEST_MEGAGATE_RUN"  # not MEGAGATE_*: tests that clean megagate's variables from a child keep it
PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None when it is gone or a zombie (exited, only not yet reaped)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]  # the name in (...) may hold spaces
    return None if state in ("Z", "X") else (state, int(ppid))


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def command_line(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def children(pid: int) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] == pid:
            found.append(int(entry.name))
    return found


def resource_tracker_of_ours(pid: int) -> bool:
    """multiprocessing's resource tracker of this very process: it exits when this process does."""
    stat = _stat(pid)
    return stat is not None and stat[1] == os.getpid() and "multiprocessing.resource_tracker" in command_line(pid)


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries SUITE_MARK=mark, this one left out."""
    needle = f"{SUITE_MARK}={mark}".encode()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in environment and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
