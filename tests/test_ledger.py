"""The usage ledger on real databases (a SQLite file, a PostgreSQL started by the tests): rows and daily rollups
written by one thread in batches, none lost while the database is down and the queue has room, the rest dropped
and counted, everything queued flushed at shutdown; and the middleware's rows, from a gateway in process."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from megagate.ledger import UsageRow
from megagate.ledger.postgres import PostgresStore
from megagate.ledger.sqlite import SQLiteStore
from megagate.ledger.writer import LedgerWriter
from megagate.upstream.mock import MockResponse
from tests.conftest import PostgresServer
from tests.inprocess import COMPLETION, call, gateway

DAY = time.mktime((2026, 12, 7, 12, 0, 0, 0, 0, 0)) - time.timezone  # noon UTC


def row(n: int, *, client: str | None = "team-a", model: str = "gpt-4", cost: float | None = 0.001) -> UsageRow:
    return UsageRow(time=DAY + n, request_id=f"req-{n}", client=client, route="/v1/chat/completions",
                    requested_model=model, served_model=model, upstream="up", key_id="key-00000001", attempts=1,
                    status=200, outcome="success", stream=False, input_tokens=10, cache_read_tokens=100,
                    cache_write_tokens=1, output_tokens=5, reasoning_tokens=2, cost_usd=cost, ttft_ms=1.5,
                    duration_ms=3.0)  # fmt: skip


class Flaky:
    """A store whose database is down until `up` is set, as a PostgreSQL being restarted would be."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.up, self.failures = inner, False, 0

    def open(self) -> None:
        self.inner.open()

    def write(self, rows: list[UsageRow]) -> None:
        if not self.up:
            self.failures += 1
            raise ConnectionError("database down")
        self.inner.write(rows)

    def prune(self, before: float) -> None:
        self.inner.prune(before)

    def close(self) -> None:
        self.inner.close()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sqlite_rows_and_daily_rollups_with_unpriced_counted_not_free(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "usage.db"))
    writer = LedgerWriter(store, batch=7, flush_every=0.05)
    writer.start()
    for n in range(20):
        writer.record(row(n, client="team-a" if n % 2 else "team-b"))
    writer.record(row(99, model="llama-3", cost=None))
    writer.close()
    assert writer.written == 21 and writer.dropped == 0
    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT COUNT(*), SUM(input_tokens) FROM requests").fetchone() == (21, 210)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    by_client = store.report("2026-12-07", "2026-12-07", ["client"])
    assert [(r["client"], r["requests"], r["cache_read_tokens"]) for r in by_client] == [
        ("team-a", 11, 1100), ("team-b", 10, 1000)]  # fmt: skip
    by_model = {r["model"]: r for r in store.report("2026-12-01", "2026-12-31", ["model"])}
    assert by_model["gpt-4"]["cost_usd"] == pytest.approx(0.02) and by_model["gpt-4"]["unpriced"] == 0
    assert by_model["llama-3"]["unpriced"] == 1 and by_model["llama-3"]["cost_usd"] == 0
    assert store.report("2026-12-08", "2026-12-09", ["day"]) == []


def test_a_database_that_is_down_loses_no_row_within_the_bound_and_counts_the_rest(tmp_path: Path) -> None:
    store = Flaky(SQLiteStore(str(tmp_path / "usage.db")))
    dropped: list[int] = []
    writer = LedgerWriter(store, bound=50, batch=10, flush_every=0.02, on_drop=lambda: dropped.append(1))
    writer.start()
    for n in range(100):
        writer.record(row(n))
    wait_for(lambda: store.failures >= 2)
    assert writer.dropped == len(dropped) > 0  # past the queue's bound, counted (and said once a minute)
    kept = 100 - writer.dropped
    assert kept <= 50 + 10  # what waits: the queue and the batch being retried
    store.up = True
    wait_for(lambda: writer.written == kept)
    writer.close()
    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (kept,)


def test_close_flushes_what_is_queued(tmp_path: Path) -> None:
    writer = LedgerWriter(SQLiteStore(str(tmp_path / "usage.db")), flush_every=5.0)  # no timed flush before close
    writer.start()
    for n in range(1234):
        writer.record(row(n))
    writer.close()
    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (1234,)


def test_postgres_shared_by_two_writers_survives_a_restart(postgres_server: PostgresServer) -> None:
    first, second = PostgresStore(postgres_server.dsn), PostgresStore(postgres_server.dsn)
    a, b = LedgerWriter(first, flush_every=0.05), LedgerWriter(second, flush_every=0.05)
    a.start()
    b.start()
    tag = f"pg-{time.time_ns()}"
    for n in range(30):
        (a if n % 2 else b).record(row(n, client=tag))
    wait_for(lambda: a.written + b.written == 30)
    postgres_server.stop()  # the database goes away with rows still coming
    for n in range(30, 50):
        a.record(row(n, client=tag))
    time.sleep(0.3)
    postgres_server.start()
    wait_for(lambda: a.written == 35, timeout=30)  # 15 before + 20 while it was down: none lost
    a.close()
    b.close()
    report = first.report("2026-12-07", "2026-12-07", ["client"])
    mine = [r for r in report if r["client"] == tag]
    assert mine and mine[0]["requests"] == 50 and mine[0]["output_tokens"] == 250


class Rows:
    def __init__(self) -> None:
        self.rows: list[UsageRow] = []

    def record(self, row: UsageRow) -> None:
        self.rows.append(row)


@pytest.mark.anyio
async def test_the_middleware_records_who_what_and_the_cost_but_not_token_counts() -> None:
    from megagate.middleware.ledger import LedgerMiddleware

    app, _ = gateway(lambda _: MockResponse(body=[COMPLETION]), usage={"store": "off"},
                     prices={"gpt-*": {"input": 1.0, "output": 2.0}})  # fmt: skip
    ledger = Rows()
    app.app = LedgerMiddleware(app.app, ledger=ledger)  # alone, around someone else's app
    assert (await call(app)).status == 200
    await call(app, "/v1/messages/count_tokens", {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]})
    rows = ledger.rows
    assert len(rows) == 1  # the token count spends nothing
    recorded = rows[0]
    assert (recorded.route, recorded.served_model, recorded.status, recorded.outcome) == (
        "/v1/chat/completions", "gpt-4", 200, "success")  # fmt: skip
    assert (recorded.input_tokens, recorded.output_tokens) == (3, 1)
    assert recorded.cost_usd == pytest.approx((3 * 1.0 + 1 * 2.0) / 1e6)
    assert "sk-" not in msgspec.json.encode(recorded).decode()
