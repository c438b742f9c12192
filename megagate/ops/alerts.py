"""Budget alerts: one JSON POST to `[alerts] webhook` per budget, threshold and period, never in a request's path.

A settled request that carries a budget past a threshold (`thresholds`, fractions of the limit) offers an alert;
the budget store says whether this is the first crossing (once across every worker and replica when the store is
Redis: `SET NX`), and only then is it queued. `AlertSender.run` (a task of the gateway's lifespan) posts each,
retrying with a growing pause; what cannot be delivered is logged and counted, never raised.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import msgspec

from megagate.core.errors import MegagateError
from megagate.upstream import Origin, Transport

logger = logging.getLogger("megagate")
RETRIES = 5
QUEUE = 1000  # alerts waiting to be sent; past it the newest are dropped (counted)


class AlertSender:
    def __init__(self, transport: Transport, webhook: str, *, on_result: Any = None, pause: float = 1.0) -> None:
        self.transport = transport
        self.origin = Origin.from_url(webhook)
        parts = urlsplit(webhook)
        self.target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
        self.on_result = on_result or (lambda result: None)  # the metrics' counter, by result
        self.pause = pause
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, object]](QUEUE)

    def offer(self, alert: dict[str, object]) -> None:
        """Queue an alert; never waits. A full queue drops it."""
        try:
            self._send.send_nowait(alert)
        except anyio.WouldBlock:
            self.on_result("dropped")
            logger.warning("megagate: budget alert dropped (%d waiting): %s", QUEUE, alert.get("budget"))

    async def aclose(self) -> None:
        """Stop taking alerts (what is queued and not yet sent is dropped with the process) and close the webhook's
        connection."""
        self._send.close()
        self._receive.close()
        await self.transport.aclose()

    async def run(self) -> None:
        async with self._receive:
            async for alert in self._receive:
                await self._deliver(alert)

    async def _deliver(self, alert: dict[str, object]) -> None:
        body = msgspec.json.encode(alert)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"user-agent", b"megagate-alerts")]  # fmt: skip
        for attempt in range(RETRIES):
            problem = ""
            try:
                async with self.transport.stream(b"POST", self.origin, self.target, headers, body) as response:
                    await response.read(64 * 1024)
                    if response.status < 300:
                        self.on_result("sent")
                        return
                    problem = f"HTTP {response.status}"
            except (MegagateError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < RETRIES - 1:
                await anyio.sleep(self.pause * 2**attempt)
        self.on_result("failed")
        logger.warning("megagate: budget alert for %s not delivered after %d tries (%s)", alert.get("budget"),
                       RETRIES, problem)  # fmt: skip
