"""The shared ledger: PostgreSQL through psycopg 3's sync connection, on the ledger's writer thread (psycopg's
async connection does not run on trio). Every worker and replica writes its own rows; the daily rollups are
upserted, so they add up across them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from megagate.ledger import UsageRow, sql


class PostgresStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._connection: Any = None

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, connect_timeout=5)

    def open(self) -> None:
        self.close()
        self._connection = self._connect()
        try:
            with self._connection.transaction():  # two workers creating the tables at once: one fails, retries
                for statement in sql.SCHEMA:
                    self._connection.execute(statement)
        except Exception:
            self.close()
            raise

    def write(self, rows: list[UsageRow]) -> None:
        if self._connection is None or self._connection.closed:
            self._connection = self._connect()  # the server restarted, or the connection was cut
        try:
            with self._connection.transaction(), self._connection.cursor() as cursor:
                cursor.executemany(sql.insert_requests("%s"), sql.request_values(rows))
                cursor.executemany(sql.upsert_daily("%s"), sql.daily_values(rows))
        except Exception:
            self._connection.close()  # the next try reconnects
            raise

    def prune(self, before: float) -> None:
        with self._connection.transaction():
            self._connection.execute("DELETE FROM requests WHERE time < %s", (before,))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def report(self, since: str, until: str, group_by: Sequence[str]) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self._connect() as connection, connection.cursor(row_factory=dict_row) as cursor:
            cursor.execute(sql.report_query("%s", group_by), (since, until))
            return [dict(row) for row in cursor.fetchall() if row["requests"] is not None]
