"""AccessLogMiddleware: one structured (JSON) line per request on the `megagate.access` logger.

It gives each request an id (the client's `x-request-id` if it is sane, else a new one), passes it upstream and
echoes it in the response. The line holds who, what, how it went and how long it took; never message content and
never a secret (keys appear only as ids, clients by name). Nothing is built when the logger would drop the line.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import msgspec

from megagate.asgi import ASGIApp, Clock, Headers, Receive, Scope, Send, header, observe_response
from megagate.state import get_client, get_state, route_of

logger = logging.getLogger("megagate.access")
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_encoder = msgspec.json.Encoder()


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, clock: Clock = time.monotonic, text: bool = False, log: bool = True) -> None:
        self.app = app
        self.clock = clock
        self.text = text  # a short human line instead of JSON (log_format = "text")
        self.log = log  # False (access_log = false): request ids still given and passed on, no line written

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = given if given is not None and _SANE_ID.fullmatch(given) else os.urandom(16).hex().encode()
        if given != request_id:  # the id travels upstream with the request (the proxy forwards x-request-id)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
            scope["headers"].append((b"x-request-id", request_id))
        started = self.clock()
        observer, send = observe_response(scope, send, self.clock)

        def echo_id(headers: Headers) -> Headers:
            return [*((k, v) for k, v in headers if k != b"x-request-id"), (b"x-request-id", request_id)]

        try:
            with observer.adding_headers(echo_id):
                await self.app(scope, receive, send)
        finally:
            if self.log and logger.isEnabledFor(logging.INFO):
                # The record made directly: `logger.info` would first walk the stack for the caller's file and line
                # (findCaller), about a third of this line's cost, to say what is always this line.
                line = self._line(scope, request_id, observer.status, started, observer.first_byte)
                logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None))

    def _line(self, scope: Scope, request_id: bytes, status: int, started: float, first_byte: float | None) -> str:
        state = get_state(scope)
        client = get_client(scope)
        line: dict[str, Any] = {
            "request_id": request_id.decode(),
            "method": scope.get("method"),
            "path": route_of(scope).path,
            "status": status,
            "client": client.name if client is not None else None,
            "duration_ms": round((self.clock() - started) * 1000, 2),
            "ttft_ms": round((first_byte - started) * 1000, 2) if first_byte is not None else None,
        }
        if state is not None:
            line["model"] = state.requested_model
            line["served_model"] = state.served_model
            line["stream"] = state.request.stream
            line["attempts"] = len(state.attempts)
            line["keys"] = [attempt.key_id for attempt in state.attempts]
            if state.dropped_tools:
                line["dropped_tools"] = state.dropped_tools
            if state.usage is not None:
                usage = state.usage  # prompt_tokens counts the whole prompt, as OpenAI's does; its cached part beside
                line["prompt_tokens"] = usage.prompt
                line["completion_tokens"] = usage.output
                line["cache_read_tokens"] = usage.cache_read
                line["cache_write_tokens"] = usage.cache_write
                line["reasoning_tokens"] = usage.reasoning
                cost = state.cost
                line["cost_usd"] = round(cost, 8) if cost is not None else None  # None: the model has no price
            if state.stream_failure is not None:  # a stream that started fine and then broke is no success
                line["outcome"] = "failed_after_start"
                line["error"] = state.stream_failure
        return _human(line) if self.text else _encoder.encode(line).decode()


def _human(line: dict[str, Any]) -> str:
    """`POST /v1/chat/completions 200 gpt-4 stream 2 attempts 812 ms`: the JSON line's essentials for a terminal."""
    parts = [str(line["method"]), str(line["path"]), str(line["status"])]
    if "model" in line:
        served = line["served_model"]
        parts.append(line["model"] if served == line["model"] else f"{line['model']}->{served}")
        parts += ["stream"] if line["stream"] else []
        parts.append(f"{line['attempts']} attempt{'s' if line['attempts'] != 1 else ''}")
    parts.append(f"{line['duration_ms']:.0f} ms")
    if "error" in line:
        parts.append(f"FAILED AFTER START: {line['error']}")
    return " ".join(parts)
