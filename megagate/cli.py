"""The `megagate` command: `serve` (hypercorn with hypercorn.toml) and `demo` (gateway + fake upstream, no key)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import anyio
import msgspec

from megagate.core.errors import ConfigError, MegagateError

DEMO_PROMPT = "Say hello to a newcomer."


def _hypercorn_toml() -> Path | None:
    local = Path("hypercorn.toml")
    return local if local.is_file() else None


def serve(args: argparse.Namespace) -> int:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.run import run

    from megagate.config import load_config

    try:
        gateway_config = load_config()  # fail here, with one line, rather than inside a worker
    except ConfigError as exc:
        print(f"megagate: bad configuration: {exc}", file=sys.stderr)
        return 2
    path = _hypercorn_toml()
    config = HypercornConfig.from_toml(path) if path else HypercornConfig()
    config.application_path = "megagate.app:app"
    if args.bind:
        config.bind = [args.bind]
    from megagate.ops.summary import describe

    print(describe(gateway_config), file=sys.stderr)
    if not gateway_config.clients:
        print(
            f"megagate: warning: no client keys configured, so anyone who can reach {', '.join(config.bind)} can "
            "spend the upstream keys (set MEGAGATE_CLIENT_KEYS or [[clients]])",
            file=sys.stderr,
        )
    if args.workers:
        config.workers = args.workers
    if args.worker_class:
        config.worker_class = args.worker_class
    if config.workers > 1 and gateway_config.pool.store == "memory":
        print(
            f"megagate: warning: {config.workers} workers with the in-memory key pool: every key's rpm, tpm and "
            'concurrency are spent once per worker (set [pool] store = "redis" or MEGAGATE_REDIS_URL)',
            file=sys.stderr,
        )
    return run(config)


def demo_curl(port: int, body: bytes) -> str:
    """The curl command that sends `body` as the demo does, ready to paste into a shell (JSON content type: curl's
    `-d` alone says form-urlencoded, which megagate refuses with a 400)."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return f"curl -N {url} -H 'Content-Type: application/json' -d {shlex.quote(body.decode())}"


async def _stream_demo(port: int) -> None:
    from megagate.core.sse import SSEDecoder
    from megagate.upstream import Origin, Timeouts
    from megagate.upstream.fast_transport import FastTransport

    transport = FastTransport(timeouts=Timeouts())
    body = msgspec.json.encode({"messages": [{"role": "user", "content": DEMO_PROMPT}], "stream": True})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    print(f"$ {demo_curl(port, body)}")
    print("(no model given: megagate fills openai-gpt-oss-120b; no key given: megagate holds the pool)\n")
    decoder = SSEDecoder()
    started, events = time.monotonic(), 0
    try:
        origin = Origin("http", "127.0.0.1", port)
        async with transport.stream(b"POST", origin, b"/v1/chat/completions", headers, body) as response:
            if response.status != 200:
                print(f"megagate answered HTTP {response.status}: {(await response.read()).decode()}")
                return
            told = dict(response.headers)
            async for chunk in response.aiter_bytes():
                for event in decoder.receive_data(chunk)[1]:
                    if event.data == b"[DONE]":
                        continue
                    events += 1
                    data = msgspec.json.decode(event.data)
                    for choice in data.get("choices") or []:
                        print(choice.get("delta", {}).get("content") or "", end="", flush=True)
    finally:
        await transport.aclose()
    model = told.get(b"x-megagate-model", b"?").decode()
    attempts = told.get(b"x-megagate-attempts", b"?").decode()
    print(f"\n\n[{events} events in {time.monotonic() - started:.1f} s from {model}, {attempts} upstream attempt(s)]\n")


def demo(args: argparse.Namespace) -> int:
    from megagate.app import create_app
    from megagate.config import config_from_mapping
    from megagate.fake import FakeUpstream
    from megagate.serve import free_port, hypercorn_config

    fake_port = free_port()
    upstream = {"name": "fake", "base_url": f"http://127.0.0.1:{fake_port}", "keys": ["sk-demo-key-0001"]}
    # The access log would land on the terminal in the middle of the streamed text: the demo prints its own summary.
    # A demo's fake answers are not usage worth keeping: no ledger file in the directory it was run from.
    config = config_from_mapping({"upstreams": [upstream], "access_log": False, "usage": {"store": "off"}})
    gateway = create_app(config)
    fake = FakeUpstream(ttft=0.3, tokens_per_second=12)

    async def main() -> None:
        from hypercorn.asyncio import serve as hypercorn_serve

        stop = anyio.Event()  # hypercorn shuts down through its trigger; cancelling it mid-serve is not clean
        async with anyio.create_task_group() as group:
            for app, host, port in ((fake, "127.0.0.1", fake_port), (gateway, args.host, args.port)):
                group.start_soon(
                    partial(hypercorn_serve, app, hypercorn_config(host, port), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
                )
            await anyio.sleep(0.5)
            await _stream_demo(args.port)
            if args.once:
                stop.set()
                return
            print(f"megagate is serving on http://{args.host}:{args.port} in front of a fake upstream. Try:")
            print(
                f"  curl -X POST http://localhost:{args.port}/v1/chat/completions "
                '-H "Content-Type: application/json" -d \'{"messages": [{"role": "user", "content": "hi"}]}\''
            )
            print("Ctrl-C stops it.")

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main)
    return 0


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration (FILE, else MEGAGATE_CONFIG or the simple-mode environment); print it, secrets
    masked, and exit 0, or print the one-line error and exit 2."""
    import os

    from megagate.config import load_config
    from megagate.ops.summary import describe

    environ = dict(os.environ)
    if args.file:
        environ["MEGAGATE_CONFIG"] = args.file
    try:
        config = load_config(environ)
    except ConfigError as exc:
        print(f"megagate: bad configuration: {exc}", file=sys.stderr)
        return 2
    print(describe(config))
    return 0


def hash_key(args: argparse.Namespace) -> int:
    import hashlib

    print(hashlib.sha256(args.key.encode()).hexdigest())
    return 0


def usage(args: argparse.Namespace) -> int:
    """`megagate usage [--since 7d] [--until DAY] [--by client,model,day] [--csv]`: the ledger's sums, as a table."""
    import datetime

    from megagate.config import load_config
    from megagate.ops.usage_report import as_csv, as_table, day, groups, report_store

    try:
        config = load_config()
        group_by = groups(args.by)
        today = datetime.datetime.now(datetime.UTC).date()
        since, until = day(args.since, today, today - datetime.timedelta(days=7)), day(args.until, today, today)
    except (ConfigError, MegagateError) as exc:
        print(f"megagate: {exc}", file=sys.stderr)
        return 2
    store = report_store(config)
    if store is None:
        print('megagate: the usage ledger is off ([usage] store = "off")', file=sys.stderr)
        return 2
    try:
        rows = store.report(since, until, group_by)
    except Exception as exc:  # noqa: BLE001 -- the database's own error, said in one line
        print(f"megagate: cannot read the usage ledger ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    print(as_csv(rows, group_by) if args.csv else f"usage {since} .. {until} (UTC)\n{as_table(rows, group_by)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from megagate.config import log_level

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("megagate").addHandler(handler)
    logging.getLogger("megagate").setLevel(log_level())
    parser = argparse.ArgumentParser(prog="megagate", description="An LLM API gateway in front of MegaLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway under hypercorn (reads ./hypercorn.toml)")
    serve_parser.add_argument("--bind", help="host:port (default from hypercorn.toml, else 127.0.0.1:8000)")
    serve_parser.add_argument("--workers", "-w", type=int)
    serve_parser.add_argument("--worker-class", "-k", choices=["asyncio", "uvloop", "trio"])
    serve_parser.set_defaults(run=serve)
    demo_parser = commands.add_parser("demo", help="stream an answer through megagate from a built-in fake upstream")
    demo_parser.add_argument("--host", default="127.0.0.1")
    demo_parser.add_argument("--port", type=int, default=8000)
    demo_parser.add_argument("--once", action="store_true", help="exit after the streamed answer")
    demo_parser.set_defaults(run=demo)
    check_parser = commands.add_parser("check-config", help="validate the configuration and print it, secrets masked")
    check_parser.add_argument("file", nargs="?", help="a TOML file (default: MEGAGATE_CONFIG, else the environment)")
    check_parser.set_defaults(run=check_config)
    hash_parser = commands.add_parser("hash-key", help="print the SHA-256 digest of a client key for the config")
    hash_parser.add_argument("key")
    hash_parser.set_defaults(run=hash_key)
    usage_parser = commands.add_parser("usage", help="print what was spent, from the usage ledger")
    usage_parser.add_argument("--since", help="a day (YYYY-MM-DD) or days back (7d); default 7d")
    usage_parser.add_argument("--until", help="a day (YYYY-MM-DD); default today")
    usage_parser.add_argument("--by", default="day", help="client, model, day, upstream (comma-separated)")
    usage_parser.add_argument("--csv", action="store_true", help="CSV with a header row, for a spreadsheet")
    usage_parser.set_defaults(run=usage)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
