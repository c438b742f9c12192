"""ErrorsMiddleware: the outermost layer; renders any error raised inside into the route's own error envelope."""

from __future__ import annotations

import logging

from megagate.asgi import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send, send_error
from megagate.core.errors import MegagateError
from megagate.state import route_format

logger = logging.getLogger("megagate.errors")


class ErrorsMiddleware:
    """Turn a `MegagateError` into its envelope, and anything else into a 500 envelope with the traceback logged.

    Nothing can be rendered once the response has started; then the error is logged and the connection closed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except ClientDisconnected:
            return
        except MegagateError as error:
            if started:
                logger.warning("error after the response started: %s", error.message)
                return
            await send_error(send, error, route_format(scope))
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, MegagateError("Internal error in megagate."), route_format(scope))
