"""`/admin/spending`: what was spent, from the usage ledger, as one server-rendered page (signed in as `/admin`).

Spend per day as an SVG bar chart (drawn here: no script, no CDN), then per client and per model their requests,
tokens by kind and cost, with a bar for each budget (today's and this month's spend against its limit) and the
unpriced requests flagged (their cost is unknown, not 0). Names and counts only: never a key.
"""

from __future__ import annotations

import datetime
import fnmatch
import html
from typing import Any

import anyio

from megagate.asgi import Receive, Scope, Send
from megagate.config import Config
from megagate.core.budget import Budget
from megagate.ops.html import admin_digest, login_form, page, send_html, signed_in, table
from megagate.ops.usage_report import report_store

DAYS = 30


class UsagePage:
    def __init__(self, config: Config, today: Any = None) -> None:
        assert config.admin_token is not None
        self.config = config
        self.store = report_store(config)
        self.digest = admin_digest(config.admin_token)
        self.today = today or (lambda: datetime.datetime.now(datetime.UTC).date())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not signed_in(scope, self.digest):
            await send_html(send, 401, page("megagate: sign in", login_form(scope)))
            return
        if self.store is None:
            off = '<p>The usage ledger is off ([usage] store = "off").</p>'
            await send_html(send, 200, page("megagate spending", off))
            return
        today = self.today()
        since = (today - datetime.timedelta(days=DAYS - 1)).isoformat()
        rows = await anyio.to_thread.run_sync(self.store.report, since, today.isoformat(), ["day", "client", "model"])
        status = html.escape(scope.get("root_path", "") + "/admin")
        await send_html(send, 200, page("megagate spending", self._body(rows, today, status)))

    def _body(self, rows: list[dict[str, Any]], today: datetime.date, status: str) -> str:
        parts = [f'<p><small>the last {DAYS} days, UTC · <a href="{status}">status</a></small></p>',
                 "<h2>spend per day</h2>", chart(rows, today)]  # fmt: skip
        month = today.strftime("%Y-%m")
        client_budgets = {c.name: c.budget for c in self.config.clients if c.budget is not None}
        by_client = _sums(rows, "client")
        client_rows = []
        for name, sums in by_client.items():
            spent = _spent(rows, lambda r, n=name: r["client"] == n, today, month)
            client_rows.append(_row(name or "anonymous", sums, client_budgets.get(name), spent))
        parts.append("<h2>clients</h2>" + (table(_HEADINGS, client_rows) or "<p>nothing recorded</p>"))
        by_model = _sums(rows, "model")
        model_rows = []
        for name, sums in by_model.items():
            glob, budget = next(((g, b) for g, b in self.config.budgets.items() if fnmatch.fnmatchcase(name, g)),
                                ("", None))  # fmt: skip
            spent = _spent(rows, lambda r, g=glob: bool(g) and fnmatch.fnmatchcase(str(r["model"]), g), today, month)
            model_rows.append(_row(name, sums, budget, spent))
        parts.append("<h2>models</h2>" + (table(_HEADINGS, model_rows) or "<p>nothing recorded</p>"))
        return "".join(parts)


_HEADINGS = ["name", "requests", "input", "cache read", "cache write", "output", "reasoning", "cost USD", "budget"]
_TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def _sums(rows: list[dict[str, Any]], by: str) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = {}
    for row in rows:
        total = sums.setdefault(str(row[by] or ""), {})
        for field in ("requests", *_TOKENS, "cost_usd", "unpriced"):
            total[field] = total.get(field, 0) + float(row[field] or 0)
    return dict(sorted(sums.items(), key=lambda item: -item[1]["cost_usd"]))


def _spent(rows: list[dict[str, Any]], matches: Any, today: datetime.date, month: str) -> tuple[float, float]:
    """(today's, this month's) spend of the rows `matches` picks."""
    picked = [r for r in rows if matches(r)]
    return (sum(float(r["cost_usd"] or 0) for r in picked if r["day"] == today.isoformat()),
            sum(float(r["cost_usd"] or 0) for r in picked if str(r["day"]).startswith(month)))  # fmt: skip


def _row(name: str, sums: dict[str, float], budget: Budget | None, spent: tuple[float, float]) -> list[str]:
    cost = f"{sums['cost_usd']:.4f}"
    if sums["unpriced"]:
        cost += f' <span class="unpriced">+ {int(sums["unpriced"])} unpriced</span>'
    bars = []
    for period, used in (("daily", spent[0]), ("monthly", spent[1])):
        limit = getattr(budget, period) if budget is not None else None
        if limit:
            share = used / limit
            bars.append(f'{period} <span class="bar" title="${used:.4f} of ${limit:g}"><span class="'
                        f'{"over" if share >= 1 else ""}" style="width:{min(100, share * 100):.0f}%"></span></span> '
                        f"${used:.2f} / ${limit:g}")  # fmt: skip
    return [html.escape(name), f"{int(sums['requests']):,}", *(f"{int(sums[t]):,}" for t in _TOKENS), cost,
            "<br>".join(bars) or "-"]  # fmt: skip


def chart(rows: list[dict[str, Any]], today: datetime.date, days: int = DAYS) -> str:
    """Spend per day as SVG bars, the oldest day on the left; each bar's title says its day and amount."""
    per_day: dict[str, float] = {}
    for row in rows:
        per_day[str(row["day"])] = per_day.get(str(row["day"]), 0.0) + float(row["cost_usd"] or 0)
    span = [(today - datetime.timedelta(days=days - 1 - n)).isoformat() for n in range(days)]
    top = max([per_day.get(d, 0.0) for d in span] + [1e-9])
    width, height, bar = days * 12, 120, 10
    bars = []
    for n, day in enumerate(span):
        value = per_day.get(day, 0.0)
        h = round(value / top * (height - 20), 1)
        bars.append(f'<rect x="{n * 12 + 1}" y="{height - 14 - h}" width="{bar}" height="{h}" fill="#48a">'
                    f"<title>{day}: ${value:.4f}</title></rect>")  # fmt: skip
    labels = (f'<text x="0" y="{height - 2}" font-size="9">{span[0]}</text>'
              f'<text x="{width}" y="{height - 2}" font-size="9" text-anchor="end">{span[-1]}</text>'
              f'<text x="0" y="9" font-size="9">max ${top:.4f} a day</text>')  # fmt: skip
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="spend per day">{"".join(bars)}{labels}</svg>')  # fmt: skip
