"""The typed per-request object the middlewares share through the ASGI scope, instead of re-reading the body."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from megagate.core.errors import Format
from megagate.core.request import ChatRequest
from megagate.core.schemas import Usage
from megagate.routing import Endpoint, Target

SCOPE_KEY = "megagate"


@dataclass(slots=True)
class RequestState:
    """What one request has learned so far. Written by the layer that knows it, read by the ones inside it."""

    endpoint: Endpoint  # what the client asked for, in which format
    request: ChatRequest
    target: Target | None = None  # where this attempt goes: chosen by RotationMiddleware (routing.choose)
    api_key: str | None = None  # the pool key leased for this attempt
    key_id: str | None = None  # its public id, safe to log
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    served_model: str | None = None
    usage: Usage | None = None
    first_byte_at: float | None = None
    client_name: str | None = None
    response_started: bool = False
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # (upstream, key id, outcome) per attempt
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (from model, to model)
    local_answer: str | None = None  # why megagate answered itself instead of an upstream (count_tokens)

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
    """The API format a path speaks, and so the envelope its errors use."""
    return "anthropic" if route_path(scope).startswith("/v1/messages") else "openai"
