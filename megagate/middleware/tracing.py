"""TracingMiddleware: one OpenTelemetry server span per request and one child span per upstream attempt.

Only in the stack when `[tracing]` is configured (and `opentelemetry-sdk` installed): off, it costs nothing, as
it is not there. Spans follow the GenAI semantic conventions where they apply (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens` / `output_tokens`), plus megagate's
own (`megagate.upstream`, `megagate.key_id`, `megagate.outcome`, `megagate.ttft_ms`); never a key or content. The
attempt spans are written from the request's attempt records when it ends, with their own start and end times; the
trace context goes upstream as `traceparent`, so the upstream's spans join the trace.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind, Status, StatusCode

from megagate.asgi import ASGIApp, Clock, Receive, Scope, Send, observe_response
from megagate.state import get_state, route_of


class TracingMiddleware:
    def __init__(
        self, app: ASGIApp, *, tracer: trace.Tracer, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.clock = clock  # the attempts' clock (RotationMiddleware's), turned into wall time for the spans
        self.wall = wall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_of(scope).path
        started = self.clock()
        observer, send = observe_response(scope, send, self.clock)
        with self.tracer.start_as_current_span(f"{scope['method']} {path}", kind=SpanKind.SERVER) as span:
            carrier: dict[str, str] = {}
            inject(carrier)  # the upstream request carries this trace (the proxy forwards traceparent)
            scope["headers"] = [*scope["headers"], *((k.encode(), v.encode()) for k, v in carrier.items())]
            try:
                await self.app(scope, receive, send)
            finally:
                status, first_byte = observer.status, observer.first_byte
                span.set_attribute("http.response.status_code", status)
                if first_byte is not None:
                    span.set_attribute("megagate.ttft_ms", round((first_byte - started) * 1000, 2))
                if status >= 500 or status == 0:
                    span.set_status(Status(StatusCode.ERROR))
                self._attempts(scope, span)

    def _attempts(self, scope: Scope, span: Any) -> None:
        state = get_state(scope)
        if state is None:
            return
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", state.requested_model)
        span.set_attribute("gen_ai.response.model", state.served_model)
        if state.usage is not None:
            usage = state.usage  # semantic conventions: input counts the whole prompt, cache reads and writes included
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read)
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", usage.cache_write)
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoning)
        offset = self.wall() - self.clock()  # from the attempts' monotonic clock to wall time, in ns below
        context = trace.set_span_in_context(span)
        for attempt in state.attempts:
            child = self.tracer.start_span(
                f"chat {attempt.model}", context=context, kind=SpanKind.CLIENT,
                start_time=int((attempt.started + offset) * 1e9),
                attributes={"gen_ai.request.model": attempt.model, "megagate.upstream": attempt.upstream,
                            "megagate.key_id": attempt.key_id,
                            "megagate.outcome": attempt.outcome_name},
            )  # fmt: skip
            if attempt.outcome is not None and attempt.outcome.value != "success":
                child.set_status(Status(StatusCode.ERROR, attempt.outcome.value))
            ended = attempt.ended if attempt.ended is not None else self.clock()
            child.end(end_time=int((ended + offset) * 1e9))
