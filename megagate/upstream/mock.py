"""An in-memory `Transport` for tests (as httpcore's mock backend): scripted answers, recorded requests, no socket.

Each request gets the next `MockResponse` of the script (or what a function of the request returns). A response's
body is a list of steps: bytes are delivered as one chunk, a float sleeps that many seconds (time passes on
whatever clock the test runs), `HANG` waits forever, an exception is raised where it stands (an `UpstreamError`
stands for a reset or a read timeout). `open_responses` counts the contexts not yet left, so a test can assert
after a cancellation that nothing leaked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from megagate.asgi import Headers
from megagate.upstream import Origin, read_limited

HANG = object()  # a body step: wait forever (until cancelled)
Step = object  # bytes, a float (seconds), an exception, or HANG


@dataclass
class MockResponse:
    status: int = 200
    headers: Headers = field(default_factory=lambda: [(b"content-type", b"application/json")])
    body: Sequence[Step] = (b"{}",)
    before_headers: BaseException | float | None = None  # raised, or slept, before the headers arrive


@dataclass(frozen=True)
class MockRequest:
    method: bytes
    origin: Origin
    target: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def sse(*events: bytes, content_type: bytes = b"text/event-stream") -> MockResponse:
    """A streamed answer: each event its own chunk."""
    return MockResponse(200, [(b"content-type", content_type)], list(events))


class _Response:
    def __init__(self, scripted: MockResponse) -> None:
        self.status = scripted.status
        self.headers = scripted.headers
        self._steps = list(scripted.body)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for step in self._steps:
            if isinstance(step, bytes):
                yield step
            elif isinstance(step, BaseException):
                raise step
            elif isinstance(step, float | int):
                await anyio.sleep(step)
            elif step is HANG:
                await anyio.sleep_forever()

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        return await read_limited(self.aiter_bytes(), limit)


class MockTransport:
    """A Transport answering from a script; `requests` records what was sent."""

    def __init__(self, script: Sequence[MockResponse] | Callable[[MockRequest], MockResponse]) -> None:
        self._script = script if callable(script) else list(script)
        self.requests: list[MockRequest] = []
        self.open_responses = 0
        self.closed = False

    def _next(self, request: MockRequest) -> MockResponse:
        if callable(self._script):
            return self._script(request)
        if not self._script:
            raise AssertionError(f"MockTransport: no scripted response left for {request.target!r}")
        return self._script.pop(0)

    @asynccontextmanager
    async def stream(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        first_byte: float | None = None,
    ) -> AsyncIterator[_Response]:
        request = MockRequest(method, origin, target, list(headers), body)
        self.requests.append(request)
        scripted = self._next(request)
        self.open_responses += 1
        try:
            if isinstance(scripted.before_headers, BaseException):
                raise scripted.before_headers
            if scripted.before_headers:
                await anyio.sleep(scripted.before_headers)
            yield _Response(scripted)
        finally:
            self.open_responses -= 1

    async def aclose(self) -> None:
        self.closed = True
