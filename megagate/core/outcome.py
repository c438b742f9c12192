"""What happened to one upstream attempt, decided once: `classify` turns an error into an `Outcome`, and the
policies that act on it (retry on another key, fall back to another model, cool or disable the key) read the
outcome, never the error's status again.

Why each class: a 429 is about the key's budget for the model; 401/403 about the key itself; a 5xx or an unreachable
upstream about the upstream, not the request; a timeout (the upstream's 408 too) about this model being slow, so
another key of it would wait as long again; any other 4xx is the request's own fault and tells nothing.
"""

from __future__ import annotations

import enum
from typing import Literal

from megagate.core.errors import (
    MegagateError,
    NoKeyAvailable,
    NoUsableKey,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)


class Outcome(enum.Enum):
    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CLIENT_ERROR = "client_error"  # the request's fault (a 400): says nothing about the key
    CANCELLED = "cancelled"
    CONNECT_ERROR = "connect_error"  # the upstream could not be reached: says nothing about the key either


# Worth trying on another key of the same upstream before the client hears of it.
RETRIED_ON_ANOTHER_KEY = frozenset(
    {Outcome.RATE_LIMITED, Outcome.AUTH_FAILED, Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR}
)
FallbackSwitch = Literal["rate_limit", "error"]


def classify(error: MegagateError) -> Outcome:
    """The outcome `error` stands for. Pool errors count as what made the pool refuse: every key cooling is a
    rate limit, every key refused an auth failure."""
    if isinstance(error, NoUsableKey):
        return Outcome.AUTH_FAILED
    if isinstance(error, NoKeyAvailable):
        return Outcome.RATE_LIMITED
    if isinstance(error, UpstreamStatus):
        status = error.upstream_status
        if status == 429:
            return Outcome.RATE_LIMITED
        if status in (401, 403):
            return Outcome.AUTH_FAILED
        if status == 408:
            return Outcome.TIMEOUT
        return Outcome.SERVER_ERROR if status >= 500 else Outcome.CLIENT_ERROR
    if isinstance(error, UpstreamTimeout):
        return Outcome.TIMEOUT
    if isinstance(error, UpstreamConnectError):
        return Outcome.CONNECT_ERROR
    if isinstance(error, UpstreamError):
        return Outcome.SERVER_ERROR  # a protocol error or an error event in place of an answer
    return Outcome.CLIENT_ERROR


def fallback_switch(outcome: Outcome) -> FallbackSwitch | None:
    """Which of MegaLLM's `fallback_on_*` switches governs falling back after `outcome`; None: never."""
    if outcome is Outcome.RATE_LIMITED:
        return "rate_limit"
    if outcome in (Outcome.AUTH_FAILED, Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECT_ERROR):
        return "error"
    return None
