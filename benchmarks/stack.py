"""megagate's own CPU per request and per streamed event, in process: python -m benchmarks.stack [-n N]

No server and no socket: the default stack over the in-memory transport (`upstream/mock.py`), so what is measured
is megagate's middleware and relay work alone, and each feature's share of it: the same load is run with one layer
left out at a time. Process CPU time, the best of several rounds with the variants interleaved (on this noisy VM,
noise only adds). The hypercorn figures in `benchmarks.run` add the server and the sockets to these.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from typing import Any

import anyio
import msgspec

from megagate.app import Gateway
from megagate.assembly import build_router, build_stack
from megagate.config import Config, config_from_mapping
from megagate.routing import Routes
from megagate.state import get_state
from megagate.upstream.mock import MockResponse, MockTransport, sse

KEYS = [f"sk-stack-bench-{n:04d}" for n in range(4)]
COMPLETION = msgspec.json.encode({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
})  # fmt: skip
CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,"delta":{"content":"tok "}}]}\n\n'  # noqa: E501
EVENTS = [CHUNK] * 100 + [
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"bench","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":100,"total_tokens":103}}\n\n',
    b"data: [DONE]\n\n",
]
REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
# Layers that can be left out and still leave a working gateway (DefaultsMiddleware prepares the request state
# every other layer reads, so it stays).
LAYERS = ["MetricsMiddleware", "AccessLogMiddleware", "LedgerMiddleware", "ErrorsMiddleware", "AuthMiddleware",
          "ClientLimitsMiddleware", "BudgetMiddleware", "FallbackMiddleware", "RotationMiddleware"]  # fmt: skip
LEDGER = os.path.join(tempfile.mkdtemp(prefix="megagate-stack-"), "usage.db")  # the default SQLite ledger, written
PRICES = {"bench": {"input": 1.0, "output": 2.0}}  # priced, so that the cost is computed as in production
BUDGETS = {"bench": {"daily": 1e12, "monthly": 1e12}}  # held, never reached: each request reserves and settles


class ChooseTarget:
    """What a stack without RotationMiddleware still needs: the request's target (`routing.choose`, the one
    decision rotation makes besides the key), set where rotation would set it. No key is leased."""

    def __init__(self, app: Any, config: Config) -> None:
        self.app, self.routes = app, Routes(config)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        state = get_state(scope)
        if state is not None:
            state.target = self.routes(state.request.model, state.endpoint)
        await self.app(scope, receive, send)


def build(without: set[str]) -> Gateway:
    """The default gateway with the layers named in `without` left out of its stack."""

    def answer(request: Any) -> MockResponse:
        return sse(*EVENTS) if b'"stream":true' in request.body else MockResponse(body=[COMPLETION])

    upstream = {"name": "mock", "base_url": "http://mock.test", "keys": KEYS}
    settings = {"upstreams": [upstream], "usage": {"path": LEDGER}, "prices": PRICES, "budgets": BUDGETS}
    config = config_from_mapping(settings, environ={})
    gateway = Gateway(config, transport=MockTransport(answer))
    resources = gateway.resources()
    app: Any = build_router(config, resources)
    if "RotationMiddleware" in without:
        app = ChooseTarget(app, config)
    for cls, kwargs in reversed(build_stack(config, resources)):
        if cls.__name__ not in without:
            app = cls(app, **kwargs)
    gateway.app = app
    return gateway


async def one(app: Any, body: bytes, path: str = "/v1/chat/completions", bodies: list[bytes] | None = None) -> int:
    """One POST of `body` to `path` through `app`; the number of messages it sent (their bodies into `bodies`)."""
    sent = 0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if bodies is not None and message["type"] == "http.response.body":
            bodies.append(message["body"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"bench")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
    await app(scope, receive, send)
    return sent


async def measure(app: Gateway, stream: bool, n: int) -> float:
    """One round: CPU µs per request (plain) or per relayed event (stream)."""
    body = msgspec.json.encode({**REQUEST, "stream": stream})
    started = time.process_time()
    events = 0
    for _ in range(n):
        events += await one(app, body) - 2  # a stream's events: all but the start and the final empty body
    return (time.process_time() - started) / (events if stream else n) * 1e6


async def main_async(n: int, rounds: int) -> None:
    variants = [("default stack", set[str]())] + [(f"without {layer}", {layer}) for layer in LAYERS]
    variants.append(("defaults only (+ router, proxy)", set(LAYERS)))
    apps = [build(without) for _, without in variants]
    for app in apps:  # each its own writer thread, as a served gateway has (started by its lifespan)
        assert app.ledger is not None
        app.ledger.start()
    best = [[float("inf"), float("inf")] for _ in variants]
    for round_ in range(rounds):  # the variants interleaved, each figure the best of its rounds: noise only adds
        for index, app in enumerate(apps):
            best[index][0] = min(best[index][0], await measure(app, False, n))
            best[index][1] = min(best[index][1], await measure(app, True, max(1, n // 20)))
        print(f"round {round_ + 1}/{rounds}", flush=True)
    (base_plain, base_stream) = best[0]
    print("\n| stack | µs per plain request | its share | µs per streamed event | its share |\n|---|---|---|---|---|")
    for index, ((name, _), (plain, streamed)) in enumerate(zip(variants, best, strict=True)):
        shares = ("", "") if not index else (f"{1 - plain / base_plain:.0%}", f"{1 - streamed / base_stream:.0%}")
        print(f"| {name} | {plain:.1f} | {shares[0]} | {streamed:.2f} | {shares[1]} |")
    for app in apps:
        assert app.ledger is not None
        app.ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="plain requests per round (streams: n / 20)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("megagate").setLevel(logging.WARNING)
    access = logging.getLogger("megagate.access")  # as `megagate serve` sets it up, to /dev/null
    access.handlers, access.propagate = [logging.StreamHandler(open(os.devnull, "w"))], False  # noqa: SIM115
    anyio.run(main_async, args.n, args.rounds)


if __name__ == "__main__":
    main()
