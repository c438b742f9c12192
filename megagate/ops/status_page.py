"""`/admin`: the pool's status as one server-rendered HTML page, refreshing itself, readable on a phone.

Per upstream and key: id and mask, state (ok, cooling, disabled), in flight against the limit, rpm and tpm use
against the limits, requests and failed attempts, last error; per client its limits and use; the fallback chains
and how often each was taken; megagate's version and the configuration's fingerprint. Never a secret: keys appear
as id and mask, errors were scrubbed when recorded. The admin token is asked for once in a form; the browser then
holds an HttpOnly cookie with a digest of it (never the token), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from typing import Any
from urllib.parse import parse_qs

from megagate import __version__
from megagate.asgi import Clock, Receive, Scope, Send, header, read_body
from megagate.config import Config
from megagate.ops.prometheus import Metrics
from megagate.pool import KeyPool, KeyReport

COOKIE = b"megagate_admin"
REFRESH_SECONDS = 5
STYLE = """body{font:14px system-ui,sans-serif;margin:1rem;color:#222}h1{font-size:1.2rem}
h2{font-size:1rem;margin-top:1.5rem}.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}
td,th{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}.ok{color:#080}
.cooling{color:#b60}.disabled{color:#c00}small{color:#666}"""


def _digest(token: str) -> str:
    return hashlib.sha256(b"megagate-admin:" + token.encode()).hexdigest()


def _cookie(scope: Scope) -> str | None:
    raw = header(scope, b"cookie") or b""
    for part in raw.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE:
            return value.decode("latin-1")
    return None


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
        self.digest = _digest(config.admin_token)
        self.clock = clock
        self.fingerprint = hashlib.sha256(repr(config).encode()).hexdigest()[:12]  # names the config, reveals nothing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            await self._login(scope, receive, send)
            return
        cookie = _cookie(scope)
        if cookie is None or not hmac.compare_digest(cookie, self.digest):
            await _html(send, 401, _page("megagate: sign in", _form(scope)))
            return
        await _html(send, 200, _page("megagate status", await self._body(), refresh=True))

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        form = parse_qs((await read_body(receive, 4096)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if not hmac.compare_digest(_digest(token), self.digest):
            await _html(send, 401, _page("megagate: sign in", "<p>Wrong token.</p>" + _form(scope)))
            return
        cookie = COOKIE + b"=" + self.digest.encode() + b"; Path=/; HttpOnly; SameSite=Strict"
        page = (scope.get("root_path", "") + "/admin").encode()
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", page), (b"set-cookie", cookie), (b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def _body(self) -> str:
        failed = self._failed_attempts()
        parts = [f"<p><small>megagate {__version__} · configuration {self.fingerprint} · "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.clock()))} UTC · "
                 f"refreshes every {REFRESH_SECONDS} s</small></p>"]  # fmt: skip
        for name, pool in self.pools.items():
            rows = [_key_row(report, failed.get(report.id, 0)) for report in await pool.report()]
            parts.append(f"<h2>upstream {html.escape(name)}</h2>" + _table(
                ["key", "state", "in flight", "requests / min", "tokens / min", "failed attempts", "last error"], rows
            ))  # fmt: skip
        clients = _table(["client", "limits", "requests / min", "tokens / min"], self._client_rows())
        parts.append("<h2>clients</h2>" + (clients or "<p>none: the gateway is open</p>"))
        chains = [[html.escape(model), html.escape(" → ".join(chain)), str(self._fallbacks_from(model))]
                  for model, chain in self.config.fallbacks.items()]  # fmt: skip
        parts.append("<h2>fallbacks</h2>" + (_table(["model", "chain", "taken"], chains) or "<p>none configured</p>"))
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


def _table(headings: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _form(scope: Scope) -> str:
    action = html.escape(scope.get("root_path", "") + "/admin/login")
    return (f'<form method="post" action="{action}"><label>Admin token <input name="token" type="password" '
            'autocomplete="current-password" required></label> <button>Sign in</button></form>')  # fmt: skip


def _page(title: str, body: str, *, refresh: bool = False) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1">{meta}<title>{title}</title><style>{STYLE}</style></head>'
            f"<body><h1>{title}</h1>{body}</body></html>").encode()  # fmt: skip


async def _html(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
