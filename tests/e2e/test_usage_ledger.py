"""The usage ledger behind real hypercorn processes: a SQLite file by default (flushed when the gateway stops),
PostgreSQL shared by two workers; the rows carry the tokens and cost, never a key."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import openai

from tests.conftest import GATEWAY_KEYS, FakeControl, PostgresServer, Process, gateway_toml, start_gateway

PRICED = '[prices]\n"gpt-*" = { input = 2.0, output = 8.0, cache_read = 0.5 }\n'


def ask(gateway: Process, count: int, stream: bool = False) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as sdk:
        for _ in range(count):
            if stream:
                chunks = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                                     stream=True)  # fmt: skip
                for _ in chunks:
                    pass
            else:
                sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_the_default_sqlite_ledger_keeps_every_request_and_flushes_at_shutdown(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path
) -> None:
    fake.add_rule({"caching": {"read": 1000}})
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url, extra=PRICED))
    try:
        ask(gateway, 3)
        ask(gateway, 2, stream=True)
    finally:
        gateway.stop()  # SIGTERM: hypercorn's graceful shutdown, then the lifespan's, which flushes the queue
    with sqlite3.connect(tmp_path / "megagate-usage.db") as db:  # the default path, in the working directory
        rows = db.execute("SELECT served_model, stream, cache_read_tokens, output_tokens, cost_usd, key_id "
                          "FROM requests ORDER BY time").fetchall()  # fmt: skip
        daily = db.execute("SELECT model, requests, cache_read_tokens FROM daily").fetchall()
    assert [(model, bool(stream)) for model, stream, *_ in rows] == [("gpt-4", False)] * 3 + [("gpt-4", True)] * 2
    assert all(r[2] == 1000 and r[3] > 0 and r[4] is not None and r[4] > 0 for r in rows), rows
    assert daily == [("gpt-4", 5, 5000)]
    assert all(key not in (tmp_path / "megagate-usage.db").read_bytes().decode(errors="replace")
               for key in GATEWAY_KEYS)  # fmt: skip


def test_two_workers_share_a_postgres_ledger(
    fake_upstream: Process, fake: FakeControl, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    tag = f"pg-e2e-{time.time_ns()}"
    usage = f'[usage]\nstore = "postgres"\ndsn = "{postgres_server.dsn}"\n'
    clients = f'[[clients]]\nname = "{tag}"\nkey = "sk-client-{tag}"\n'
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url, extra=PRICED + usage + clients), "-w", "2")
    try:
        for _ in range(12):  # a connection each: spread over both workers
            with openai.OpenAI(base_url=gateway.url + "/v1", api_key=f"sk-client-{tag}", max_retries=0) as sdk:
                sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    finally:
        gateway.stop()
    from megagate.ledger.postgres import PostgresStore

    today = time.strftime("%Y-%m-%d", time.gmtime())
    report = [r for r in PostgresStore(postgres_server.dsn).report(today, today, ["client"]) if r["client"] == tag]
    assert report and report[0]["requests"] == 12 and report[0]["unpriced"] == 0 and report[0]["cost_usd"] > 0
