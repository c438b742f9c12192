"""Micro-benchmarks of the pure core: python -m benchmarks.micro (prints µs per operation)."""

from __future__ import annotations

import timeit

from benchmarks.mock_upstream import CHUNK, EXPECTED_STREAM
from megagate.core.request import RequestDefaults, prepare_chat_request
from megagate.core.scheduler import KeyLimits, KeyScheduler, Lease, Outcome
from megagate.core.sse import SSEDecoder
from megagate.core.usage import read_usage

REQUEST = (
    b'{"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hello, benchmark! '
    b'Tell me about gateways."}],"temperature":0.7,"max_tokens":100,"stream":true,'
    b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}'
)


def per_call(label: str, func: object, number: int, unit: int = 1) -> None:
    seconds = min(timeit.repeat(func, number=number, repeat=5))  # type: ignore[arg-type]
    print(f"{label:<52} {seconds / number / unit * 1e6:8.2f} µs")


def main() -> None:
    defaults = RequestDefaults()
    events = EXPECTED_STREAM.count(b"\n\n")

    def parse_stream() -> None:
        decoder = SSEDecoder()
        for i in range(0, len(EXPECTED_STREAM), len(CHUNK)):
            decoder.receive_data(EXPECTED_STREAM[i : i + len(CHUNK)])

    per_call("SSE parse, per event (one event per read)", parse_stream, 200, events)
    per_call(
        "SSE parse, per event (whole stream in one read)",
        lambda: SSEDecoder().receive_data(EXPECTED_STREAM),
        200,
        events,
    )
    per_call("usage check on a chunk without usage", lambda: read_usage(CHUNK, "openai"), 100000)
    per_call(
        "request decode + validate + default model", lambda: prepare_chat_request(REQUEST, defaults).encode(), 20000
    )
    for keys in (10, 1000):
        limits = [KeyLimits.for_tier("pro")] * keys
        scheduler = KeyScheduler([f"k{i}" for i in range(keys)], limits)
        clock = [0.0]

        def cycle(scheduler: KeyScheduler = scheduler, clock: list[float] = clock) -> None:
            clock[0] += 0.05  # 20 req/s: inside 10 pro keys' rpm, so every acquire succeeds
            lease = scheduler.acquire(200, clock[0])
            assert isinstance(lease, Lease)
            scheduler.release(lease, Outcome.SUCCESS, clock[0], tokens_used=150)

        per_call(f"scheduler acquire+release, {keys} pro keys (round robin)", cycle, 20000)


if __name__ == "__main__":
    main()
