"""megagate's exception tree and its rendering into the OpenAI and Anthropic error envelopes.

Every error a client can see is a `MegagateError`: it carries the HTTP status, the OpenAI error `type`, the offending
`param` and, where it applies, a Retry-After. The route decides the envelope (`render_error`), so the same error
reads naturally to an OpenAI SDK and to an Anthropic SDK.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

Format = Literal["openai", "anthropic", "responses"]  # a wire format; the Responses API errors in OpenAI's envelope


class MegagateError(Exception):
    """An error that becomes an HTTP response in the route's own envelope."""

    status: int = 500
    type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class InvalidRequest(MegagateError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413


class NotFound(InvalidRequest):
    status = 404


class AuthenticationFailed(MegagateError):
    status = 401
    type = "authentication_error"


class PermissionDenied(MegagateError):
    status = 403
    type = "permission_error"


class RateLimited(MegagateError):
    status = 429
    type = "rate_limit_error"


class BudgetExceeded(RateLimited):
    """A client's or a model's spending limit for the day or month is reached (Retry-After: until it resets)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="budget_exceeded", retry_after=retry_after)


class NoKeyAvailable(RateLimited):
    """Every upstream key is saturated or cooling."""


class NoUsableKey(NoKeyAvailable):
    """Every upstream key was refused by the upstream (401/403) and waits for its probe: a 503 until then, not a
    429 that would send clients into a rate-limit backoff."""

    status = 503
    type = "api_error"


class PoolUnavailable(MegagateError):
    """The shared key pool (Redis) does not answer and the deployment chose to fail closed."""

    status = 503
    type = "api_error"


class RedisError(MegagateError):
    """The shared store (Redis) could not be reached or answered in a way megagate cannot read. The pools turn it
    into their `on_redis_error` policy; one that escapes them is a 503, never a 500."""

    status = 503
    type = "api_error"


class ClientDisconnected(MegagateError):
    """The client went away before its request was complete: there is nobody left to answer."""

    status = 499  # nginx's "client closed request"; never rendered
    type = "invalid_request_error"


class ConfigError(Exception):
    """A bad configuration; the message names the field and is printed as one line at start-up."""


class UpstreamError(MegagateError):
    """The upstream failed; subclasses say how."""

    status = 502
    type = "api_error"


class UpstreamStatus(UpstreamError):
    """The upstream answered with error status `upstream_status`; `body` is its (already scrubbed) error body.

    The client sees the upstream's own status for the request's faults (400, 404, 413, 422...) and for 429, but a
    401/403 means megagate's *pool key* was refused, not the client's, and a 5xx is a bad gateway: both become 502
    (503, 504 and 529 stay), so an SDK neither blames its own key nor mistakes the gateway for the failing party."""

    def __init__(self, status: int, message: str, *, body: bytes = b"", retry_after: float | None = None) -> None:
        super().__init__(message, status=client_status_for(status), retry_after=retry_after)
        self.upstream_status = status
        self.body = body
        self.type = error_type_for_status(self.status)


def client_status_for(upstream_status: int) -> int:
    """503 and 529 (Anthropic's "overloaded") keep their status: both say "retry later", which SDKs act on."""
    if upstream_status in (401, 403, 407) or (upstream_status >= 500 and upstream_status not in (503, 504, 529)):
        return 502
    return upstream_status


class UpstreamConnectError(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"


class UpstreamProtocolError(UpstreamError):
    """The upstream broke the HTTP or SSE protocol, or dropped the connection mid-body."""

    status = 502


def error_type_for_status(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 400 or status == 404 or status == 413 or status == 422:
        return "invalid_request_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "api_error"


# Anthropic names its error types differently (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class _OpenAIErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorEnvelope(msgspec.Struct):
    error: _OpenAIErrorBody


class _AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorEnvelope(msgspec.Struct, tag="error", tag_field="type"):
    error: _AnthropicErrorBody


_encoder = msgspec.json.Encoder()


def render_error(error: MegagateError, fmt: Format = "openai") -> bytes:
    """The JSON body for `error` in the envelope of format `fmt`."""
    if fmt == "anthropic":
        kind = _ANTHROPIC_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
        return _encoder.encode(AnthropicErrorEnvelope(_AnthropicErrorBody(kind, error.message)))
    return _encoder.encode(OpenAIErrorEnvelope(_OpenAIErrorBody(error.message, error.type, error.param, error.code)))


def error_headers(error: MegagateError) -> list[tuple[bytes, bytes]]:
    """Response headers for `error`: JSON content type, and Retry-After (whole seconds, rounded up) when known."""
    headers = [(b"content-type", b"application/json")]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    return headers
