"""The typed per-request object the middlewares share through the ASGI scope, instead of re-reading the body."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from megagate.asgi import Scope
from megagate.config import ClientConfig
from megagate.core.errors import Format, UpstreamError
from megagate.core.outcome import Outcome
from megagate.core.request import ChatRequest
from megagate.core.usage import Usage
from megagate.core.window import SlidingWindow
from megagate.routing import ENDPOINTS, Endpoint, Target, endpoint_format

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

    @property
    def outcome_name(self) -> str:
        """How it went, as metrics, the access log, traces and debug messages name it ("running" until it ends)."""
        return self.outcome.value if self.outcome is not None else "running"


class ClientAnswer(Protocol):
    """What the client is being sent for the current attempt (`endpoints.relay.Relay`): the one writer of "the
    answer has started", of its usage and of why a started stream was ended with our error event. Layers outside
    ask it to end a started stream (`end`); they never write SSE themselves."""

    @property
    def started(self) -> bool: ...

    @property
    def usage(self) -> Usage | None: ...

    @property
    def failure(self) -> str | None: ...

    @property
    def cost(self) -> float | None: ...

    async def end(self, error: UpstreamError) -> None: ...


@dataclass(slots=True)
class RequestState:
    """One request: what the client asked (endpoint, parsed request), the decisions made for it, and what was tried.
    Each field has one writer: the layer that decides it (named beside it). What the client was sent (started,
    usage, a stream's failure) is read from the answer, never written here."""

    endpoint: Endpoint  # DefaultsMiddleware (from the request's route): what the client asked for, in which format
    request: ChatRequest  # DefaultsMiddleware; BudgetMiddleware (a cheaper model over budget) and FallbackMiddleware
    # (each fallback) set its model
    target: Target | None = None  # RotationMiddleware (routing.choose): where the current attempt goes
    api_key: str | None = None  # RotationMiddleware: the pool key leased for the current attempt (a secret)
    attempts: list[Attempt] = field(default_factory=list)  # RotationMiddleware appends; HedgingMiddleware merges
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # FallbackMiddleware: (from model, to model)
    answer: ClientAnswer | None = None  # the endpoint answering the current attempt (proxy, or a local answer)
    local_answer: str | None = None  # CountTokensApp: why megagate answered itself (a token count)
    dropped_tools: list[str] = field(default_factory=list)  # the proxy: hosted tools the translation left out

    @property
    def served_model(self) -> str:
        """The model of the last attempt (the one that answered, or is answering), else the one asked for."""
        return self.attempts[-1].model if self.attempts else self.request.model

    @property
    def requested_model(self) -> str:
        """The model the client asked for (after aliases), before any fallback."""
        return self.fallbacks[0][0] if self.fallbacks else self.request.model

    @property
    def format(self) -> Format:
        """The client's format: the envelope of its errors and the shape of its answer."""
        return self.endpoint.format

    @property
    def response_started(self) -> bool:
        """The client has seen the answer's first byte: nothing may be retried or fall back after it."""
        return self.answer is not None and self.answer.started

    @property
    def usage(self) -> Usage | None:
        """What the current attempt's answer says it used."""
        return self.answer.usage if self.answer is not None else None

    @property
    def cost(self) -> float | None:
        """USD for what the current attempt's answer used; None when its model has no price, or nothing answered."""
        return self.answer.cost if self.answer is not None else None

    @property
    def stream_failure(self) -> str | None:
        """Why a stream that had started was ended with megagate's error event, if it was."""
        return self.answer.failure if self.answer is not None else None


def get_state(scope: MutableMapping[str, Any]) -> RequestState | None:
    state = scope.get("state")
    return state.get(SCOPE_KEY) if state else None


def set_state(scope: MutableMapping[str, Any], request_state: RequestState) -> None:
    scope.setdefault("state", {})[SCOPE_KEY] = request_state


@dataclass(frozen=True, slots=True)
class RequestRoute:
    """Where a request is going, resolved once per request: its path below the mount point, the client endpoint it
    names (None for megagate's own routes) and the format of its error envelope."""

    path: str
    endpoint: Endpoint | None
    format: Format
    seen: tuple[str, str]  # the scope's (path, root_path) it was resolved from


ROUTE_KEY = "megagate.route"


def route_of(scope: MutableMapping[str, Any]) -> RequestRoute:
    """The request's route: resolved by the first megagate layer that asks and kept in the scope, so every later
    layer reads the same one. The path is the one below the mount point: `/v1/chat/completions` also when mounted
    at `/llm` (Starlette's Mount sets `root_path` and keeps the full `path`)."""
    seen = (scope["path"], scope.get("root_path", ""))
    route: RequestRoute | None = scope.get(ROUTE_KEY)
    if route is None or route.seen != seen:  # a layer embedded outside a Mount saw the scope before it was mounted
        path = _below_mount(*seen)
        route = scope[ROUTE_KEY] = RequestRoute(path, ENDPOINTS.get(path), endpoint_format(path), seen)
    return route


def _below_mount(path: str, root: str) -> str:
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path
