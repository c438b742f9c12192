"""The innermost ASGI app: send the prepared request to its upstream and relay the answer, SSE without buffering.

It reads everything it needs from the request state (model, body, the leased key) and raises `Upstream*` errors
for failures that happen before the client has seen a byte, so the layers around it (rotation, fallback) can retry
or fall back. Once the first event is relayed it owns the failure: the stream ends with an SSE `error` event and
`data: [DONE]`, never silently and never with a hang.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import anyio
import msgspec

from megagate.asgi import Receive, Scope, Send, send_json
from megagate.config import Config, UpstreamConfig
from megagate.core.errors import (
    InvalidRequest,
    MegagateError,
    NotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
    render_error,
)
from megagate.core.schemas import read_usage
from megagate.core.sse import SSEDecoder
from megagate.state import RequestState, get_state
from megagate.upstream import Headers, Origin, Transport

MAX_PLAIN_BODY = 64 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # ask nginx & co. not to buffer the stream
]
# Client headers worth passing on; everything else (auth, cookies, hop-by-hop, host) stays here.
FORWARDED_HEADERS = frozenset({b"accept", b"user-agent", b"x-request-id", b"anthropic-version", b"anthropic-beta"})
KEPT_RESPONSE_HEADERS = frozenset({b"x-request-id", b"openai-processing-ms", b"request-id"})
DONE = b"data: [DONE]\n\n"

_upstream_error_decoder = msgspec.json.Decoder(dict[str, Any])


def upstream_error(status: int, body: bytes, retry_after: bytes | None, secrets: tuple[str, ...]) -> UpstreamStatus:
    """An UpstreamStatus carrying the upstream's own message, with any pool key scrubbed out of it."""
    message = f"upstream returned HTTP {status}"
    param = code = None
    try:
        decoded = _upstream_error_decoder.decode(body)
        error = decoded.get("error")
        if isinstance(error, Mapping):
            message = str(error.get("message") or message)
            param, code = error.get("param"), error.get("code")
        elif isinstance(error, str):
            message = error
    except msgspec.DecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        if text:
            message = f"{message}: {text}"
    if status in (401, 403):
        message = f"the upstream refused megagate's key (HTTP {status}): {message}"
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    failure = UpstreamStatus(status, message, retry_after=parse_retry_after(retry_after))
    failure.param = param if isinstance(param, str) else None
    failure.code = code if isinstance(code, str) else None
    return failure


def parse_retry_after(value: bytes | None) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3 delay-seconds; an HTTP-date is ignored: it needs a clock)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _response_header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class UpstreamProxy:
    """Relay a prepared chat request (see `RequestState`) to its upstream."""

    def __init__(self, *, config: Config, transport: Transport, path: bytes = b"/v1/chat/completions") -> None:
        self.config = config
        self.transport = transport
        self.path = path
        self._origins = {u.name: (Origin.from_url(u.origin_url), base_path_of(u.origin_url)) for u in config.upstreams}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope)
        if state is None:
            raise InvalidRequest("This route expects a JSON chat request (no request state was prepared).")
        upstream: UpstreamConfig | None = state.upstream or self.config.upstream_for(state.request.model)
        if upstream is None:
            raise NotFound(
                f"The model '{state.request.model}' is not served by any configured upstream.", param="model"
            )
        key = state.api_key
        if key is None and upstream.keys:
            key = upstream.key_configs[0].key
        origin, base_path = self._origins[upstream.name]
        headers = self._headers(scope, key)
        body = state.request.encode()
        headers.append((b"content-length", str(len(body)).encode()))
        secrets = (key,) if key else ()
        failure: MegagateError | None = None
        async with anyio.create_task_group() as group:
            # Watch for the client leaving so the upstream request is cancelled at once, not at the next send.
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            try:
                # The first-byte timeout runs until the first event is relayed (the transport's own bounds only
                # the headers): a stream whose headers come at once but whose first event never does is a timeout.
                first_byte = self.config.timeouts.first_byte
                with anyio.CancelScope(deadline=anyio.current_time() + first_byte) as waiting:
                    await self._exchange(state, waiting, origin, base_path + self.path, headers, body, secrets, send)
                if waiting.cancelled_caught:
                    raise UpstreamTimeout(
                        f"upstream sent no first event within the first-byte timeout ({first_byte:g} s)"
                    )
            except MegagateError as error:
                failure = error  # raised below, outside the task group, so it does not arrive as an ExceptionGroup
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _exchange(
        self,
        state: RequestState,
        waiting: anyio.CancelScope,
        origin: Origin,
        target: bytes,
        headers: Headers,
        body: bytes,
        secrets: tuple[str, ...],
        send: Send,
    ) -> None:
        async with self.transport.stream(b"POST", origin, target, headers, body) as response:
            if response.status >= 400:
                retry_after = _response_header(response.headers, b"retry-after")
                raise upstream_error(response.status, await response.read(MAX_ERROR_BODY), retry_after, secrets)
            content_type = _response_header(response.headers, b"content-type") or b""
            if content_type.startswith(b"text/event-stream"):
                await self._relay_stream(state, waiting, response, send)
            else:
                waiting.deadline = math.inf
                payload = await response.read(MAX_PLAIN_BODY)
                state.usage = read_usage(payload)
                state.served_model = state.request.model
                state.response_started = True
                await send_json(send, response.status, payload, self._response_headers(response.headers))

    def _headers(self, scope: Scope, key: str | None) -> Headers:
        headers = [(name, value) for name, value in scope["headers"] if name in FORWARDED_HEADERS]
        headers.append((b"content-type", b"application/json"))
        if key:
            headers.append((b"authorization", b"Bearer " + key.encode()))
        return headers

    @staticmethod
    def _response_headers(upstream: Headers) -> Headers:
        headers = [(b"content-type", b"application/json")]
        headers.extend((k, v) for k, v in upstream if k.lower() in KEPT_RESPONSE_HEADERS)
        return headers

    async def _relay_stream(self, state: RequestState, waiting: anyio.CancelScope, response: Any, send: Send) -> None:
        decoder = SSEDecoder()
        started = False
        saw_done = False
        chunks = response.aiter_bytes()
        try:
            async for chunk in chunks:
                complete, events = decoder.receive_data(chunk)
                if not events and not started:
                    continue  # comments or partial events: hold them until there is a real first event
                if b'"usage"' in complete:
                    for event in events:
                        state.usage = read_usage(event.data) or state.usage
                if events and events[-1].data == b"[DONE]":
                    saw_done = True
                if not started:
                    _raise_for_error_event(events[0].data)
                    started = True
                    waiting.deadline = math.inf
                    state.response_started = True
                    state.served_model = state.request.model
                    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                if complete:
                    await send({"type": "http.response.body", "body": complete, "more_body": True})
            rest, _ = decoder.receive_data(b"")
            if not started:
                raise UpstreamProtocolError("upstream closed the stream before sending an event")
            if not saw_done:
                raise UpstreamProtocolError("upstream ended the stream without [DONE]; the answer may be incomplete")
        except UpstreamError as failure:
            if not started:
                raise
            # Bytes already reached the client: it cannot be retried, so end it visibly, never as a success.
            await send({"type": "http.response.body", "body": stream_error_event(failure), "more_body": False})
            return
        await send({"type": "http.response.body", "body": rest, "more_body": False})


def stream_error_event(error: MegagateError) -> bytes:
    """A final SSE error event in OpenAI's shape, then `[DONE]`, to end a stream that failed after it started."""
    return b"data: " + render_error(error) + b"\n\n" + DONE


def _raise_for_error_event(data: bytes) -> None:
    """An upstream that reports an error as the first event (status 200) failed before anything was relayed."""
    if data.lstrip().startswith(b'{"error"'):
        raise upstream_error(502, data, None, ())


def base_path_of(origin_url: str) -> bytes:
    """The path prefix of an upstream base URL (`http://host/openai` serves `/openai/v1/...`)."""
    after_scheme = origin_url.split("://", 1)[1]
    slash = after_scheme.find("/")
    return after_scheme[slash:].rstrip("/").encode() if slash != -1 else b""


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
