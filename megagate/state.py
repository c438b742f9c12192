"""The typed per-request object the middlewares share through the ASGI scope, instead of re-reading the body."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from megagate.asgi import Scope
from megagate.config import ClientConfig
from megagate.core.errors import Format
from megagate.core.outcome import Outcome
from megagate.core.request import ChatRequest
from megagate.core.schemas import Usage
from megagate.core.window import SlidingWindow
from megagate.routing import Endpoint, Target, endpoint_format

SCOPE_KEY = "megagate"
CLIENT_KEY = "megagate.client"


@dataclass(slots=True)
class Client:
    """An authenticated client: its configuration and, when it has limits, its own sliding windows."""

    config: ClientConfig
    window: SlidingWindow | None  # its rpm/tpm use, when it has limits (ClientLimitsMiddleware counts it)

    @property
    def name(self) -> str:
        return self.config.name


def get_client(scope: Scope) -> Client | None:
    state = scope.get("state")
    return state.get(CLIENT_KEY) if state else None


@dataclass(slots=True)
class Attempt:
    """One upstream attempt: appended by RotationMiddleware when it leases a key, its outcome set at release.
    The only record of what was tried: metrics, the access log, errors and the x-megagate-* headers read it."""

    model: str
    upstream: str
    key_id: str
    outcome: Outcome | None = None  # None while it runs
    started: float = 0.0  # RotationMiddleware's clock, for the attempt's trace span
    ended: float | None = None

    def __str__(self) -> str:
        return f"{self.model} ({self.key_id})"


@dataclass(slots=True)
class RequestState:
    """One request: what the client asked (endpoint, parsed request), the decisions made for it, and what was tried.
    Each field has one writer: the layer that decides it (named beside it)."""

    endpoint: Endpoint  # DefaultsMiddleware: what the client asked for, in which format
    request: ChatRequest  # DefaultsMiddleware; FallbackMiddleware sets the model of each fallback
    target: Target | None = None  # RotationMiddleware (routing.choose): where the current attempt goes
    api_key: str | None = None  # RotationMiddleware: the pool key leased for the current attempt (a secret)
    attempts: list[Attempt] = field(default_factory=list)  # RotationMiddleware appends; HedgingMiddleware merges
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # FallbackMiddleware: (from model, to model)
    usage: Usage | None = None  # the proxy: what the answer says it used
    response_started: bool = False  # the proxy: the client has seen a byte; nothing may be retried after it
    local_answer: str | None = None  # CountTokensEndpoint: why megagate answered itself (a token count)
    dropped_tools: list[str] = field(default_factory=list)  # the proxy: hosted tools the translation left out
    stream_failure: str | None = None  # the proxy: why a stream that had started ended with our error event

    @property
    def served_model(self) -> str:
        """The model of the last attempt (the one that answered, or is answering), else the one asked for."""
        return self.attempts[-1].model if self.attempts else self.request.model

    @property
    def format(self) -> Format:
        """The client's format: the envelope of its errors and the shape of its answer."""
        return self.endpoint.format


def get_state(scope: MutableMapping[str, Any]) -> RequestState | None:
    state = scope.get("state")
    return state.get(SCOPE_KEY) if state else None


def set_state(scope: MutableMapping[str, Any], request_state: RequestState) -> None:
    scope.setdefault("state", {})[SCOPE_KEY] = request_state


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The path below the mount point: `/v1/chat/completions` also when mounted at `/llm` (as Starlette's Mount
    sets `root_path` and keeps the full `path`)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def route_format(scope: MutableMapping[str, Any]) -> Format:
    """The API format a path speaks, and so the envelope its errors use (`routing.endpoint_format`)."""
    return endpoint_format(route_path(scope))
