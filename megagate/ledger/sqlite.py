"""The embedded ledger: one SQLite file (stdlib `sqlite3`), WAL, written by the ledger's one writer thread.

WAL lets the usage report and `megagate usage` read while the writer writes; several workers on one host may share
the file (SQLite serialises their writes, each waiting up to `busy_timeout`). Several hosts: PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from megagate.ledger import UsageRow, sql


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        return connection

    def open(self) -> None:
        self._connection = self._connect()
        for statement in sql.SCHEMA:
            self._connection.execute(statement.replace("DOUBLE PRECISION", "REAL"))

    def write(self, rows: list[UsageRow]) -> None:
        assert self._connection is not None
        with self._connection as connection:  # one transaction: the rows and their rollups, or neither
            connection.execute("BEGIN")
            connection.executemany(sql.insert_requests("?"), sql.request_values(rows))
            connection.executemany(sql.upsert_daily("?"), sql.daily_values(rows))

    def prune(self, before: float) -> None:
        assert self._connection is not None
        self._connection.execute("DELETE FROM requests WHERE time < ?", (before,))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def report(self, since: str, until: str, group_by: Sequence[str]) -> list[dict[str, Any]]:
        """Sums per group between two UTC days (YYYY-MM-DD, inclusive), on a connection of the caller's own."""
        connection = self._connect()
        try:
            connection.row_factory = sqlite3.Row
            try:
                rows = connection.execute(sql.report_query("?", group_by), (since, until)).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # nothing recorded yet
                raise
            return [dict(row) for row in rows if row["requests"] is not None]
        finally:
            connection.close()
