"""ErrorsMiddleware: renders any error raised inside it into the route's own error envelope (metrics and the access
log sit outside it, so they see the rendered status)."""

from __future__ import annotations

import logging

from megagate.asgi import ASGIApp, Receive, Scope, Send, header, observe_response, send_error
from megagate.core.errors import ClientDisconnected, MegagateError, NoKeyAvailable, UpstreamError
from megagate.state import get_state, route_of

logger = logging.getLogger("megagate.errors")


class ErrorsMiddleware:
    """Render a `MegagateError` raised inside in the route's own envelope; anything else becomes a 500 envelope and
    is raised on (its traceback is the server's to log). It renders, it does not reword: the message a client reads
    is the error's own plus what was tried (from the attempt records), composed here on a copy.

    Nothing can be rendered once the response has started; then a megagate error is logged and the connection
    closed. With `debug` on, a request sent with `X-Debug: true` gets what megagate tried appended to its error
    message (error class, attempts, models and key ids: nothing secret)."""

    def __init__(self, app: ASGIApp, *, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observer, send = observe_response(scope, send)
        try:
            await self.app(scope, receive, send)
        except ClientDisconnected:
            return
        except MegagateError as error:
            if observer.status:
                logger.warning("error after the response started: %s", error.message)
                return
            await send_error(send, self._told(scope, error, error), route_of(scope).format)
        except Exception as exc:
            if not observer.status:
                internal = MegagateError("Internal error in megagate.")
                await send_error(send, self._told(scope, internal, exc), route_of(scope).format)
            raise

    def _told(self, scope: Scope, error: MegagateError, cause: BaseException) -> MegagateError:
        """`error` as the client is told it: with what was tried and, when asked for, the debug detail."""
        state = get_state(scope)
        message = error.message
        if state is not None and state.attempts and isinstance(error, (UpstreamError, NoKeyAvailable)):
            message = f"{message} (tried: {', '.join(map(str, state.attempts))})"
        if self.debug and (header(scope, b"x-debug") or b"").lower() == b"true":
            source = cause.__cause__ if cause is error else cause
            detail = [type(source).__name__ if source is not None else type(error).__name__]
            if state is not None:
                detail.append(f"attempts={len(state.attempts)}")
                detail += [f"{a.key_id}@{a.upstream}:{a.outcome_name}" for a in state.attempts]
            message = f"{message} [debug: {'; '.join(detail)}]"
        if message == error.message:
            return error
        told = MegagateError(message, param=error.param, code=error.code, status=error.status,
                             retry_after=error.retry_after)  # fmt: skip
        told.type = error.type
        return told
