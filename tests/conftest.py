"""Shared fixtures: both event loops for every async test, and real processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from megagate.serve import free_port
from tests import processes

HYPERCORN_TOML = Path(__file__).resolve().parent.parent / "hypercorn.toml"


_LEDGER_BEFORE = pytest.StashKey[bool]()
STRAY_LEDGER = Path("megagate-usage.db")  # the ledger's default file, in the working directory


def pytest_configure(config: pytest.Config) -> None:
    """Mark every process the suite starts (the mark is inherited, and outlives reparenting to PID 1), and note
    whether a ledger file was already in the working directory (the suite must not leave one there)."""
    os.environ.setdefault(processes.SUITE_MARK, f"{os.getpid()}-{time.time_ns()}")
    config.stash[_LEDGER_BEFORE] = STRAY_LEDGER.exists()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process the suite started outlives it: name it, then kill it so none piles up. Fail it
    too when a test wrote the usage ledger's default file into the working directory."""
    if STRAY_LEDGER.exists() and not session.config.stash.get(_LEDGER_BEFORE, True):
        print(f"\na test left {STRAY_LEDGER.resolve()} behind: give its gateway a [usage] path in a tmp dir",
              file=sys.stderr)  # fmt: skip
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # multiprocessing's resource tracker, when a test spawned in this process, ends with pytest itself.
    ours = [p for p in processes.marked(os.environ[processes.SUITE_MARK]) if not processes.resource_tracker_of_ours(p)]
    left = processes.wait_gone(ours, timeout=10)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
    for pid in left:
        line = f"a process started by the suite outlived it (killed now): pid {pid}: {processes.command_line(pid)}"
        reporter.write_line(line, red=True) if reporter is not None else print(line, file=sys.stderr)
    processes.kill(left)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Explicit: anyio>=4.12 silently drops an unimportable trio."""
    return str(request.param)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


class Process:
    """A child process with its output captured to a file, so tests can grep what it printed. It leads a process
    group of its own, so stop() and kill() reach what it started (hypercorn's workers) too."""

    def __init__(
        self, args: list[str], port: int, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.port = port
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 -- lives as long as the process; closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)  # fmt: skip
        try:
            wait_for_port(port, self.popen)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if not self._file.closed:
            self._file.flush()
        return self.log.read_text(errors="replace")

    def access_line(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """Its access-log line for `request_id`: written as the request ends, just after its last byte went out,
        so it may land a moment after the client has its answer."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [
                msgspec.json.decode(line) for line in self.output().splitlines() if line.startswith('{"request_id"')
            ]
            found = [entry for entry in lines if entry["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                return dict(found[0])
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask it to shut down (hypercorn's parent stops its workers gracefully), then reap its group."""
        self.popen.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a container's hard stop or a crashed machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._file.close()


def start_fake(tmp: Path, *extra: str) -> Process:
    port = free_port()
    return Process([sys.executable, "-m", "megagate.fake", "--port", str(port), *extra], port, tmp / f"fake-{port}.log")


def start_gateway(tmp: Path, config_toml: str, *hypercorn_args: str, port: int | None = None) -> Process:
    port = port or free_port()
    config = tmp / f"megagate-{port}.toml"
    config.write_text(config_toml)
    env = {**os.environ, "MEGAGATE_CONFIG": str(config)}
    args = [sys.executable, "-m", "hypercorn", "-c", str(HYPERCORN_TOML), "-b", f"127.0.0.1:{port}", *hypercorn_args]
    # run where its files belong: the usage ledger's default SQLite file lands in the test's directory
    return Process([*args, "megagate.app:app"], port, tmp / f"gateway-{port}.log", env, cwd=tmp)


class FakeControl:
    """Talks to a fake upstream's control routes with the standard library only."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.request

        data = msgspec.json.encode(body) if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return msgspec.json.decode(response.read())

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_fake/requests"))

    def reset(self) -> None:
        self._call("DELETE", "/_fake/requests")
        self._call("DELETE", "/_fake/rules")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_fake/stats"))

    def add_rule(self, fault: dict[str, Any], **match: Any) -> None:
        self._call("POST", "/_fake/rules", {"fault": fault, **match})


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_fake(tmp_path_factory.mktemp("fake"))
    yield process
    process.stop()


@pytest.fixture
def fake(fake_upstream: Process) -> FakeControl:
    control = FakeControl(fake_upstream.url)
    control.reset()
    return control


GATEWAY_KEYS = ["sk-mega-test-key-aaaa1111", "sk-mega-test-key-bbbb2222", "sk-mega-test-key-cccc3333"]


def gateway_toml(fake_url: str, keys: list[str] = GATEWAY_KEYS, extra: str = "") -> str:
    return f"""
{extra}
[[upstreams]]
name = "fake"
base_url = "{fake_url}/v1"
keys = {msgspec.json.encode(keys).decode()}
"""


@pytest.fixture(scope="session")
def gateway(fake_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_gateway(tmp_path_factory.mktemp("gateway"), gateway_toml(fake_upstream.url))
    yield process
    process.stop()


class RedisServer:
    """A real redis-server (Debian's package) on a free port, no persistence; stop() and start() again keep the
    port, as a restarted Redis would (with no state and no cached scripts)."""

    def __init__(self, tmp: Path, *extra: str, tls: bool = False) -> None:
        self.extra = list(extra)  # more redis-server options, e.g. --requirepass (with tls: the --tls-* files)
        self.tls = tls  # TLS only: the port speaks TLS and nothing listens in the clear
        self.port = free_port()
        self.log = tmp / f"redis-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        args = ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--logfile", str(self.log), *self.extra]  # fmt: skip
        self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.popen)

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            self.popen = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1:] if Path("/usr/lib/postgresql").is_dir() else []


class PostgresServer:
    """A real PostgreSQL (Debian's `postgresql` package) in a throwaway cluster on a free port, started and
    stopped by the tests; as root it runs as the `postgres` user (initdb refuses root). stop() and start() again
    keep the data, as a restarted database would."""

    def __init__(self) -> None:
        import tempfile

        if not POSTGRES_BIN:
            pytest.fail("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
        self.bin = POSTGRES_BIN[0]
        self.dir = Path(tempfile.mkdtemp(prefix="megagate-pg-"))  # not under pytest's 0700 tmp: postgres reads it
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                        "-U", "postgres"], check=True, capture_output=True)  # fmt: skip
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        args = [*self.as_user, str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off", "-c", "full_page_writes=off"]  # fmt: skip
        self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)  # fmt: skip
        wait_for_port(self.port, self.popen, timeout=30)

    def stop(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGINT)  # fast shutdown
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            self.popen = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.remove()
