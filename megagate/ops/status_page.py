"""`/admin`: the pool's status as one server-rendered HTML page, refreshing itself, readable on a phone.

Per upstream and key: id and mask, state (ok, cooling, disabled), in flight against the limit, rpm and tpm use
against the limits, requests and failed attempts, last error; per client its limits and use; the fallback chains
and how often each was taken; megagate's version and the configuration's fingerprint. Never a secret: keys appear
as id and mask, errors were scrubbed when recorded. Signing in and the page frame: `ops/html.py`.
"""

from __future__ import annotations

import hashlib
import html
import time
from typing import Any

from megagate import __version__
from megagate.asgi import Clock, Receive, Scope, Send
from megagate.config import Config
from megagate.ops.html import admin_digest, login_form, page, send_html, sign_in, signed_in, table
from megagate.ops.prometheus import Metrics
from megagate.pool import KeyPool, KeyReport

REFRESH_SECONDS = 5


class StatusPage:
    """`GET /admin` (the page, or the login form), `POST /admin/login` (the form's token → the cookie)."""

    def __init__(
        self,
        *,
        config: Config,
        pools: dict[str, KeyPool],
        metrics: Metrics,
        clients: Any = None,
        clock: Clock = time.time,
    ) -> None:
        assert config.admin_token is not None
        self.config = config
        self.pools = pools
        self.metrics = metrics
        self.clients = clients  # auth.ClientDirectory, for the clients' local windows
        self.digest = admin_digest(config.admin_token)
        self.clock = clock
        self.fingerprint = hashlib.sha256(repr(config).encode()).hexdigest()[:12]  # names the config, reveals nothing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            await sign_in(scope, receive, send, self.digest, "/admin")
            return
        if not signed_in(scope, self.digest):
            await send_html(send, 401, page("megagate: sign in", login_form(scope)))
            return
        await send_html(send, 200, page("megagate status", await self._body(), refresh=REFRESH_SECONDS))

    async def _body(self) -> str:
        failed = self._failed_attempts()
        parts = [f"<p><small>megagate {__version__} · configuration {self.fingerprint} · "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.clock()))} UTC · "
                 f"refreshes every {REFRESH_SECONDS} s · "
                 '<a href="admin/spending">spending</a></small></p>']  # fmt: skip
        for name, pool in self.pools.items():
            rows = [_key_row(report, failed.get(report.id, 0)) for report in await pool.report()]
            parts.append(f"<h2>upstream {html.escape(name)}</h2>" + table(
                ["key", "state", "in flight", "requests / min", "tokens / min", "failed attempts", "last error"], rows
            ))  # fmt: skip
        clients = table(["client", "limits", "requests / min", "tokens / min"], self._client_rows())
        parts.append("<h2>clients</h2>" + (clients or "<p>none: the gateway is open</p>"))
        chains = [[html.escape(model), html.escape(" → ".join(chain)), str(self._fallbacks_from(model))]
                  for model, chain in self.config.fallbacks.items()]  # fmt: skip
        parts.append("<h2>fallbacks</h2>" + (table(["model", "chain", "taken"], chains) or "<p>none configured</p>"))
        return "".join(parts)

    def _failed_attempts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "megagate_upstream_attempts_total" and sample.labels["outcome"] != "success":
                    key = sample.labels["key_id"]
                    counts[key] = counts.get(key, 0) + int(sample.value)
        return counts

    def _fallbacks_from(self, model: str) -> int:
        return sum(int(s.value) for m in self.metrics.registry.collect() for s in m.samples
                   if s.name == "megagate_fallbacks_total" and s.labels["from_model"] == model)  # fmt: skip

    def _client_rows(self) -> list[list[str]]:
        rows = []
        for client in self.config.clients:
            limits = ", ".join(x for x in (f"rpm {client.rpm}" if client.rpm else "",
                                           f"tpm {client.tpm}" if client.tpm else "") if x) or "none"  # fmt: skip
            known = self.clients.by_name(client.name) if self.clients is not None else None
            window = known.window if known is not None else None
            if window is not None:
                window.prune(time.monotonic())
            used = [str(len(window.requests)), str(int(window.token_sum))] if window is not None else ["-", "-"]
            rows.append([html.escape(client.name), limits, *used])
        return rows


def _key_row(report: KeyReport, failed: int) -> list[str]:
    if report.state == "disabled":
        state = '<span class="disabled">disabled (refused: waiting for its probe)</span>'
    elif report.state == "cooling":
        state = f'<span class="cooling">cooling for {report.cooling_for:.0f} s</span>'
    elif report.cooling_models:
        models = ", ".join(f"{html.escape(m)} {s:.0f} s" for m, s in report.cooling_models.items())
        state = f'<span class="cooling">cooling for {models}</span>'
    else:
        state = '<span class="ok">ok</span>'

    def of(used: int, limit: int | None) -> str:
        return f"{used} / {limit}" if limit else str(used)

    return [
        f"{html.escape(report.id)}<br><small>{html.escape(report.mask)}</small>", state,
        of(report.in_flight, report.max_concurrency), of(report.requests_last_minute, report.rpm),
        of(report.tokens_last_minute, report.tpm), str(failed), html.escape(report.last_error or ""),
    ]  # fmt: skip
