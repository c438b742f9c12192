"""megagate's CPU per streamed `/v1/responses` event, in process: python -m benchmarks.responses_stream [-n N]

As `benchmarks.stack` (the default stack over the in-memory transport, no socket, process CPU time, the best of
several rounds), for a Responses client over a chat-completions upstream and over an Anthropic-format upstream:
the two translated Responses paths (chat chunks → Responses events; Anthropic events → chat chunks → Responses
events). It uses only `create_app`, the mock transport and `benchmarks.stack.one`, so it measures an older checkout too.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import anyio
import msgspec

from benchmarks.stack import one
from megagate.app import create_app
from megagate.config import config_from_mapping
from megagate.upstream.mock import MockResponse, MockTransport, sse

WORDS = 100
CHAT_CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"tok "}}]}\n\n'
)
CHAT = [CHAT_CHUNK] * WORDS + [
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"bench","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":100,"total_tokens":103}}\n\n',
    b"data: [DONE]\n\n",
]
ANTHROPIC = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"bench","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":0}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
    *[
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"tok "}}\n\n'
    ]
    * WORDS,
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":100}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
BODY = msgspec.json.encode({"model": "bench", "input": "hi", "stream": True})


def build(fmt: str) -> Any:
    events = CHAT if fmt == "openai" else ANTHROPIC

    def answer(request: Any) -> MockResponse:
        return sse(*events)

    upstream = {"name": "mock", "base_url": "http://mock.test", "format": fmt, "keys": ["sk-bench-resp-0001"]}
    config = config_from_mapping({"upstreams": [upstream], "access_log": False}, environ={})
    return create_app(config, transport=MockTransport(answer))


async def measure(app: Any, n: int) -> float:
    """CPU µs per upstream event relayed to the Responses client."""
    per_stream = len(CHAT if app.config.upstreams[0].formats == ["openai"] else ANTHROPIC)
    started = time.process_time()
    for _ in range(n):
        await one(app, BODY, "/v1/responses")
    events = n * per_stream
    return (time.process_time() - started) / events * 1e6


async def main_async(n: int, rounds: int) -> None:
    apps = {"chat upstream": build("openai"), "anthropic upstream": build("anthropic")}
    best = dict.fromkeys(apps, float("inf"))
    for _ in range(rounds):
        for name, app in apps.items():
            best[name] = min(best[name], await measure(app, n))
    print("| /v1/responses stream | µs per upstream event |\n|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="streams of 100 words per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("megagate").setLevel(logging.WARNING)
    anyio.run(main_async, args.n, args.rounds)


if __name__ == "__main__":
    main()
