"""The ledger's tables and statements, shared by SQLite and PostgreSQL (standard SQL with `ON CONFLICT`; only the
parameter marker and the connection differ).

`requests` holds one row per request; `daily` the rollups per (day, client, model, upstream), updated in the same
transaction, so that a usage report reads a few rows a day rather than every request. An unknown client or
upstream is '' in `daily` (NULLs never conflict in a key).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from megagate.core.budget import period_of
from megagate.ledger import COLUMNS, UsageRow

TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
GROUPS = ("day", "client", "model", "upstream")
_TYPES = {"time": "DOUBLE PRECISION", "attempts": "INTEGER", "status": "INTEGER", "stream": "BOOLEAN",
          "cost_usd": "DOUBLE PRECISION", "ttft_ms": "DOUBLE PRECISION", "duration_ms": "DOUBLE PRECISION",
          **dict.fromkeys(TOKENS, "BIGINT")}  # fmt: skip

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS requests (" + ", ".join(f"{name} {_TYPES.get(name, 'TEXT')}" for name in COLUMNS) + ")",
    "CREATE INDEX IF NOT EXISTS requests_time ON requests (time)",
    "CREATE TABLE IF NOT EXISTS daily (day TEXT NOT NULL, client TEXT NOT NULL, model TEXT NOT NULL, "
    "upstream TEXT NOT NULL, requests BIGINT NOT NULL, "
    + ", ".join(f"{t} BIGINT NOT NULL" for t in TOKENS)
    + ", cost_usd DOUBLE PRECISION NOT NULL, unpriced BIGINT NOT NULL, PRIMARY KEY (day, client, model, upstream))",
]


def insert_requests(marker: str) -> str:
    return f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join([marker] * len(COLUMNS))})"


def upsert_daily(marker: str) -> str:
    summed = ("requests", *TOKENS, "cost_usd", "unpriced")
    return (
        f"INSERT INTO daily ({', '.join((*GROUPS, *summed))}) VALUES ({', '.join([marker] * (4 + len(summed)))}) "
        "ON CONFLICT (day, client, model, upstream) DO UPDATE SET "
        + ", ".join(f"{c} = daily.{c} + excluded.{c}" for c in summed)
    )


def request_values(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    return [tuple(getattr(row, name) for name in COLUMNS) for row in rows]


def daily_values(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    """The batch summed per (day, client, model, upstream): one upsert per group, not per row."""
    groups: dict[tuple[str, str, str, str], list[Any]] = {}
    for row in rows:
        key = (period_of("daily", row.time), row.client or "", row.served_model, row.upstream or "")
        sums = groups.setdefault(key, [0] * (len(TOKENS) + 3))
        sums[0] += 1
        for i, name in enumerate(TOKENS, start=1):
            sums[i] += getattr(row, name)
        sums[-2] += row.cost_usd or 0.0
        spent = row.input_tokens + row.cache_read_tokens + row.cache_write_tokens + row.output_tokens
        sums[-1] += 1 if row.cost_usd is None and spent else 0  # tokens with no price: unknown, not free
    return [(*key, *sums) for key, sums in groups.items()]


def report_query(marker: str, group_by: Sequence[str]) -> str:
    """Sums from `daily` between two days (inclusive), grouped by `group_by` (some of GROUPS)."""
    columns = ", ".join(group_by)
    sums = ", ".join(f"SUM({c}) AS {c}" for c in ("requests", *TOKENS, "cost_usd", "unpriced"))
    select = f"SELECT {columns + ', ' if columns else ''}{sums} FROM daily WHERE day >= {marker} AND day <= {marker}"
    return select + (f" GROUP BY {columns} ORDER BY {columns}" if columns else "")


REPORT_FIELDS = ("requests", *TOKENS, "cost_usd", "unpriced")
