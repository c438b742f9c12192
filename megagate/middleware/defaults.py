"""DefaultsMiddleware: validate a chat request, fill its defaults and share it with the layers inside.

It reads the body once, checks it (`core.request`), fills the default model and configured parameters, resolves
model aliases, and stores the result as the request state in the scope. The app inside receives the prepared body
through `receive`, so it also works around an app that knows nothing of megagate. Bad input is answered here with
a 400 in the route's envelope and never reaches the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megagate.asgi import ASGIApp, Receive, Scope, Send, header, read_body, replay_body, send_error
from megagate.cancel import Deadline
from megagate.config import DEFAULT_MODEL
from megagate.core.anthropic import ANTHROPIC_RULES
from megagate.core.errors import ClientDisconnected, InvalidRequest, MegagateError
from megagate.core.request import (
    EMBEDDINGS_RULES,
    OPENAI_RULES,
    RESPONSES_RULES,
    FieldRule,
    RequestDefaults,
    Shape,
    prepare_chat_request,
)
from megagate.routing import ENDPOINTS, Endpoint
from megagate.state import RequestState, route_of, set_state

# Anthropic requires max_tokens on a message (a configured default counts), not on a token count; an embedding
# needs its input.
MESSAGES, EMBEDDINGS = ENDPOINTS["/v1/messages"], ENDPOINTS["/v1/embeddings"]
REQUIRED = {MESSAGES: frozenset({"max_tokens"}), EMBEDDINGS: frozenset({"input"})}


@dataclass(frozen=True, slots=True)
class _Profile:
    """How requests on one path are checked: the format's rules, its defaults, required fields, prompt shape."""

    rules: Mapping[str, FieldRule]
    defaults: RequestDefaults
    required: frozenset[str] = frozenset()
    shape: Shape = "messages"


def _defaults_for(default_model: str, defaults: Mapping[str, Any], rules: Mapping[str, FieldRule]) -> RequestDefaults:
    """The configured defaults that mean something, and are valid, in a format (Anthropic's temperature is 0..1: a
    default of 1.5 applies to OpenAI requests only; `max_tokens` is not a Responses parameter)."""
    kept = {}
    for name, value in defaults.items():
        if name in rules:
            try:
                RequestDefaults.from_values(default_model, {name: value}, rules)
            except InvalidRequest:
                continue
            kept[name] = value
    return RequestDefaults.from_values(default_model, kept, rules)


DEFAULT_MAX_BODY = 10 * 1024 * 1024


def is_json_content_type(value: bytes | None) -> bool:
    """Missing is fine (JSON is assumed); otherwise application/json or a +json type, any parameters."""
    if value is None:
        return True
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class DefaultsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        default_model: str = DEFAULT_MODEL,
        defaults: Mapping[str, Any] | None = None,
        aliases: Mapping[str, str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        configured = defaults or {}
        openai = _Profile(OPENAI_RULES, RequestDefaults.from_values(default_model, configured, OPENAI_RULES))
        anthropic = _defaults_for(default_model, configured, ANTHROPIC_RULES)
        responses = _defaults_for(default_model, configured, RESPONSES_RULES)
        embeddings = RequestDefaults(default_model)  # no configured parameter means anything to an embedding
        # One profile per client endpoint of the route table (`routing.ENDPOINTS`), by its format and operation.
        self.profiles: dict[Endpoint, _Profile] = {
            Endpoint("openai"): openai,
            Endpoint("anthropic"): _Profile(ANTHROPIC_RULES, anthropic, REQUIRED[MESSAGES]),
            Endpoint("anthropic", "count_tokens"): _Profile(ANTHROPIC_RULES, anthropic),
            Endpoint("responses"): _Profile(RESPONSES_RULES, responses, shape="input"),
            EMBEDDINGS: _Profile(EMBEDDINGS_RULES, embeddings, REQUIRED[EMBEDDINGS], "input"),
        }
        self.aliases = dict(aliases or {})
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope) if scope["type"] == "http" else None
        profile = self.profiles.get(route.endpoint) if route is not None and route.endpoint is not None else None
        if route is None or route.endpoint is None or profile is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            if not is_json_content_type(header(scope, b"content-type")):
                raise InvalidRequest("Content-Type must be application/json.")
            body: bytes | None = None
            with Deadline(self.body_timeout) as reading:
                body = await read_body(receive, self.max_body_bytes)
            if reading.expired or body is None:  # a slow drip holds a worker slot: it gets a deadline too
                raise InvalidRequest(f"The request body did not arrive within {self.body_timeout:g} s.", status=408)
            request = prepare_chat_request(body, profile.defaults, profile.rules, profile.required, profile.shape)
        except ClientDisconnected:
            return
        except MegagateError as error:
            await send_error(send, error, route.format)
            return
        if request.model in self.aliases:
            request.set_model(self.aliases[request.model])
        set_state(scope, RequestState(route.endpoint, request))
        # The app inside sees the prepared body (defaults filled); then the real receive, so a disconnect arrives.
        await self.app(scope, replay_body(request.encode(), receive), send)
