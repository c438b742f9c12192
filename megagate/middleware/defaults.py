"""DefaultsMiddleware: validate a chat request, fill its defaults and share it with the layers inside.

It reads the body once, checks it (`core.request`), fills the default model and configured parameters, resolves
model aliases, and stores the result as the request state in the scope. The app inside receives the prepared body
through `receive`, so it also works around an app that knows nothing of megagate. Bad input is answered here with
a 400 in the route's envelope and never reaches the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from megagate.asgi import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send, header, read_body, send_error
from megagate.config import DEFAULT_MODEL
from megagate.core.errors import InvalidRequest, MegagateError
from megagate.core.request import OPENAI_RULES, RequestDefaults, prepare_chat_request
from megagate.state import RequestState, route_format, route_path, set_state

CHAT_PATHS = ("/v1/chat/completions",)
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
        paths: tuple[str, ...] = CHAT_PATHS,
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.app = app
        self.defaults = RequestDefaults.from_values(default_model, defaults or {}, OPENAI_RULES)
        self.aliases = dict(aliases or {})
        self.paths = frozenset(paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        fmt = route_format(scope)
        try:
            if not is_json_content_type(header(scope, b"content-type")):
                raise InvalidRequest("Content-Type must be application/json.")
            body = await read_body(receive, self.max_body_bytes)
            request = prepare_chat_request(body, self.defaults)
        except ClientDisconnected:
            return
        except MegagateError as error:
            await send_error(send, error, fmt)
            return
        if request.model in self.aliases:
            request.set_model(self.aliases[request.model])
        set_state(scope, RequestState(fmt, request))
        replayed = False

        async def receive_prepared() -> Message:
            # The app inside sees the prepared body (defaults filled); later calls reach the real receive, so a
            # client disconnect is still delivered.
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": request.encode(), "more_body": False}

        await self.app(scope, receive_prepared, send)
