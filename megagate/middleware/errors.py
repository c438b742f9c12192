"""ErrorsMiddleware: the outermost layer; renders any error raised inside into the route's own error envelope."""

from __future__ import annotations

import logging

from megagate.asgi import ASGIApp, Receive, Scope, Send, header, observe_response, send_error
from megagate.core.errors import ClientDisconnected, MegagateError, NoKeyAvailable, UpstreamError
from megagate.state import get_state, route_format

logger = logging.getLogger("megagate.errors")


class ErrorsMiddleware:
    """Turn a `MegagateError` into its envelope, and anything else into a 500 envelope with the traceback logged.

    Nothing can be rendered once the response has started; then the error is logged and the connection closed.
    With `debug` on, a request sent with `X-Debug: true` gets what megagate tried appended to its error message
    (error class, attempts, models and key ids: nothing secret)."""

    def __init__(self, app: ASGIApp, *, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch, send = observe_response(scope, send)
        try:
            await self.app(scope, receive, send)
        except ClientDisconnected:
            return
        except MegagateError as error:
            if watch.started:
                logger.warning("error after the response started: %s", error.message)
                return
            await send_error(send, self._with_debug(scope, _with_attempts(scope, error)), route_format(scope))
        except Exception as exc:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not watch.started:
                internal = MegagateError("Internal error in megagate.")
                internal.__cause__ = exc
                await send_error(send, self._with_debug(scope, internal), route_format(scope))

    def _with_debug(self, scope: Scope, error: MegagateError) -> MegagateError:
        if not self.debug or (header(scope, b"x-debug") or b"").lower() != b"true":
            return error
        cause = error.__cause__
        detail = [type(cause).__name__ if cause is not None else type(error).__name__]
        state = get_state(scope)
        if state is not None:
            detail.append(f"attempts={len(state.attempts)}")
            detail += [f"{a.key_id}@{a.upstream}:{a.outcome.value if a.outcome else 'running'}" for a in state.attempts]
        error.message = f"{error.message} [debug: {'; '.join(detail)}]"
        return error


def _with_attempts(scope: Scope, error: MegagateError) -> MegagateError:
    """An upstream or pool failure, told with what was tried (models and key ids, from the attempt records: nothing
    secret). Only this outermost layer words the message: nothing inside rewrites it on the way out."""
    state = get_state(scope)
    if state is None or not state.attempts or not isinstance(error, (UpstreamError, NoKeyAvailable)):
        return error
    error.message = f"{error.message} (tried: {', '.join(map(str, state.attempts))})"
    return error
