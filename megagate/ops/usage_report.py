"""Reading the usage ledger back: `megagate usage` (a table in the terminal) and `GET /admin/usage` (JSON or CSV,
behind the admin token). Both read the daily rollups, a few rows per day, on a connection of their own in a
worker thread: the request path never waits for them.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import anyio
import msgspec

from megagate.asgi import Receive, Scope, Send, send_json
from megagate.config import Config
from megagate.core.errors import InvalidRequest
from megagate.ledger.sql import GROUPS, REPORT_FIELDS

Rows = list[dict[str, Any]]


def report_store(config: Config) -> Any:
    """The store `[usage]` writes to, for reading (None when the ledger is off)."""
    if config.usage.store == "off":
        return None
    if config.usage.store == "postgres":
        from megagate.ledger.postgres import PostgresStore

        return PostgresStore(config.usage.dsn or "")
    from megagate.ledger.sqlite import SQLiteStore

    return SQLiteStore(config.usage.path)


def day(text: str | None, today: datetime.date, default: datetime.date) -> str:
    """A UTC day from `2026-12-01`, or `7d` (seven days ago); the default when absent."""
    if not text:
        return default.isoformat()
    if match := re.fullmatch(r"(\d{1,4})d", text):
        return (today - datetime.timedelta(days=int(match.group(1)))).isoformat()
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise InvalidRequest(f"'{text}' is not a day (YYYY-MM-DD) or a number of days back (7d).") from None


def groups(text: str | None) -> list[str]:
    chosen = [g.strip() for g in (text or "day").split(",") if g.strip()]
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        raise InvalidRequest(f"group_by: '{unknown[0]}' is not one of {', '.join(GROUPS)}.", param="group_by")
    return chosen


def as_csv(rows: Rows, group_by: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*group_by, *REPORT_FIELDS])
    for row in rows:
        writer.writerow([row.get(g) for g in group_by] + [_number(row.get(f)) for f in REPORT_FIELDS])
    return out.getvalue()


def as_table(rows: Rows, group_by: Sequence[str]) -> str:
    """A plain text table for the terminal; money to the cent's hundredth."""
    header = [*group_by, "requests", "input", "cache read", "cache write", "output", "cost USD", "unpriced"]
    lines = [[str(row.get(g) or "-") for g in group_by]
             + [f"{int(row[f] or 0):,}" for f in ("requests", "input_tokens", "cache_read_tokens",
                                                  "cache_write_tokens", "output_tokens")]
             + [f"{float(row['cost_usd'] or 0):.4f}", f"{int(row['unpriced'] or 0):,}"]
             for row in rows]  # fmt: skip
    if not lines:
        return "no usage recorded in this period"
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]

    def render(cells: list[str]) -> str:  # names left, numbers right
        return " ".join(c.rjust(w) if i >= len(group_by) else c.ljust(w)
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # fmt: skip

    return "\n".join(render(cells) for cells in [header, *lines])


def _number(value: Any) -> Any:
    return round(value, 8) if isinstance(value, float) else value


class UsageApp:
    """`GET /admin/usage?from=7d&to=2026-12-07&group_by=client,model,day&format=json|csv`."""

    def __init__(self, config: Config, today: Any = None) -> None:
        self.store = report_store(config)
        self.today = today or (lambda: datetime.datetime.now(datetime.UTC).date())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        today = self.today()
        since = day(query.get("from"), today, today - datetime.timedelta(days=30))
        until = day(query.get("to"), today, today)
        group_by = groups(query.get("group_by"))
        kind = query.get("format", "json")
        if kind not in ("json", "csv"):
            raise InvalidRequest("format: must be json or csv.", param="format")
        if self.store is None:
            raise InvalidRequest('The usage ledger is off ([usage] store = "off").', status=404)
        rows: Rows = await anyio.to_thread.run_sync(self.store.report, since, until, group_by)
        if kind == "csv":
            disposition = f'attachment; filename="megagate-usage-{since}-{until}.csv"'.encode()
            headers = [(b"content-type", b"text/csv; charset=utf-8"), (b"content-disposition", disposition)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": as_csv(rows, group_by).encode()})
            return
        body = {"from": since, "to": until, "group_by": group_by, "rows": [{k: _number(v) for k, v in r.items()}
                                                                          for r in rows]}  # fmt: skip
        await send_json(send, 200, msgspec.json.encode(body))
