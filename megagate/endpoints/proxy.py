"""The innermost ASGI app: send the prepared request to its upstream and relay the answer, SSE without buffering.

It reads everything it needs from the request state (model, body, the leased key), translates between the OpenAI
and Anthropic formats when the upstream speaks only the other one (`relay.Plan`), and raises `Upstream*` errors
for failures that happen before the client has seen a byte, so the layers around it (rotation, fallback) can retry
or fall back. Once the first event is relayed it owns the failure: the stream ends with an error event, never
silently and never with a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from megagate.asgi import Headers, Receive, Scope, Send, header
from megagate.cancel import CancelOnDisconnect
from megagate.config import Config
from megagate.core.errors import (
    Format,
    InvalidRequest,
    NotFound,
    UpstreamStatus,
)
from megagate.core.pricing import PriceTable, UpstreamPrices
from megagate.core.stream_relay import usage_of
from megagate.endpoints.relay import SSE_HEADERS, Plan, Relay, make_plan, stream_for, told_headers, translate_plain
from megagate.routing import Endpoint, Target, auth_headers
from megagate.state import RequestState, get_state
from megagate.upstream import Origin, Transport, base_path_of, first_byte_timeout, response_header, upstream_error

MAX_PLAIN_BODY = 64 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
# Client headers worth passing on; everything else (auth, cookies, hop-by-hop, host) stays here.
FORWARDED_HEADERS = frozenset({b"accept", b"user-agent", b"x-request-id", b"traceparent", b"tracestate"})
# x-request-id is megagate's own (see AccessLogMiddleware); the upstream's ids stay useful for its support.
KEPT_RESPONSE_HEADERS = frozenset({b"openai-processing-ms", b"request-id"})


class UpstreamProxy:
    """Relay a prepared request (see `RequestState`) to the target its attempt was given.

    The target is RotationMiddleware's decision (`state.target`, from `routing.choose`); the proxy only reads it. A
    proxy embedded without rotation is given `route` (e.g. `routing.Routes(config)`) and then decides the target
    itself, as the one writer of `state.target` in that stack. Without either, a request has no target: 404."""

    def __init__(
        self,
        *,
        config: Config,
        transport: Transport,
        route: Callable[[str, Endpoint], Target | None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        upstream_prices: UpstreamPrices | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.route = route
        self.wall_clock = wall_clock
        self._origins = {u.name: (Origin.from_url(u.origin_url), base_path_of(u.origin_url)) for u in config.upstreams}
        self.prices = PriceTable(config.prices, upstream_prices)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope)
        if state is None:
            raise InvalidRequest("This route expects a JSON request (no request state was prepared).")
        if self.route is not None:
            state.target = self.route(state.request.model, state.endpoint)
        target = state.target
        if target is None:
            raise NotFound(
                f"The model '{state.request.model}' is not served by any configured upstream.", param="model"
            )
        key = state.api_key
        origin, base_path = self._origins[target.upstream.name]
        plan = make_plan(state, target, int(self.wall_clock()))
        state.dropped_tools = plan.dropped_tools
        headers = self._headers(scope, key, target.format, state.format)
        headers.append((b"content-length", str(len(plan.body)).encode()))
        secrets = (key,) if key else ()
        # The client leaving cancels the upstream call at once, not at the next send. The same watch carries the
        # first-byte deadline until the answer starts (the transport's own bounds only the headers): a stream
        # whose headers come at once but whose first event never does is a timeout. A plain answer needs no
        # deadline here: the transport bounds the wait for its whole body. One watch, not two scopes: each costs.
        first_byte = self.config.timeouts.first_byte
        async with CancelOnDisconnect(receive) as disconnect:
            answer = state.answer = Relay(send, on_start=disconnect.no_expiry, prices=self.prices,
                                          model=state.request.model)  # fmt: skip
            if state.request.stream:
                disconnect.expire_after(first_byte)
            await self._exchange(state, plan, answer, disconnect, origin, base_path + plan.path, headers, secrets)
        if disconnect.expired and not disconnect.disconnected:
            raise first_byte_timeout(first_byte, "first event")

    async def _exchange(
        self,
        state: RequestState,
        plan: Plan,
        answer: Relay,
        disconnect: CancelOnDisconnect,
        origin: Origin,
        target: bytes,
        headers: Headers,
        secrets: tuple[str, ...],
    ) -> None:
        async with self.transport.stream(b"POST", origin, target, headers, plan.body) as response:
            if response.status >= 400:
                retry_after = response_header(response.headers, b"retry-after")
                raise upstream_error(response.status, await response.read(MAX_ERROR_BODY), retry_after, secrets)
            content_type = response_header(response.headers, b"content-type") or b""
            if content_type.startswith(b"text/event-stream"):

                def error_for(data: bytes) -> UpstreamStatus:
                    return upstream_error(502, data, None, secrets)

                stream = stream_for(state, plan, error_for)
                await answer.relay(stream, response.aiter_bytes(), SSE_HEADERS + told_headers(plan))
                return
            disconnect.no_expiry()  # a plain answer's whole body is the transport's to bound
            payload = await response.read(MAX_PLAIN_BODY)
            usage = usage_of(payload, plan.upstream)
            payload = translate_plain(payload, plan)
            headers = self._response_headers(response.headers) + told_headers(plan)
            await answer.plain(response.status, payload, headers, usage)

    @staticmethod
    def _headers(scope: Scope, key: str | None, upstream: Format, client: Format) -> Headers:
        headers = [(name, value) for name, value in scope["headers"] if name in FORWARDED_HEADERS]
        headers.append((b"content-type", b"application/json"))
        version = None
        if upstream == "anthropic" and client == "anthropic":  # the client's own Anthropic headers pass on
            version = header(scope, b"anthropic-version")
            headers += [(name, value) for name, value in scope["headers"] if name == b"anthropic-beta"]
        return headers + auth_headers(upstream, key, version=version)

    @staticmethod
    def _response_headers(upstream: Headers) -> Headers:
        headers = [(b"content-type", b"application/json")]
        headers.extend((k, v) for k, v in upstream if k.lower() in KEPT_RESPONSE_HEADERS)
        return headers
