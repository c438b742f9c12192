"""Reading the ledger back: `megagate usage` in a terminal, `GET /admin/usage` as JSON and as a CSV a spreadsheet
opens (a header row, one row per group), a bad parameter a clear 400."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from megagate.ledger.sqlite import SQLiteStore
from megagate.ledger.writer import LedgerWriter
from tests.inprocess import call, gateway
from tests.test_ledger import row

pytestmark = pytest.mark.anyio
ADMIN = [(b"authorization", b"Bearer admin-token-usage")]


def filled(path: Path) -> Path:
    writer = LedgerWriter(SQLiteStore(str(path)), flush_every=0.05)
    writer.start()
    for n in range(6):
        writer.record(row(n, client="team-a" if n < 4 else "team-b", model="gpt-4" if n % 2 else "claude-x"))
    writer.record(row(7, client="team-b", model="llama", cost=None))
    writer.close()
    return path


async def test_admin_usage_as_json_and_as_csv(tmp_path: Path) -> None:
    db = filled(tmp_path / "usage.db")
    app, _ = gateway([], admin_token="admin-token-usage", usage={"path": str(db)})
    query = b"from=2026-12-01&to=2026-12-31&group_by=client,model"
    answer = await call(app, "/admin/usage", method="GET", headers=ADMIN, query=query)
    body = msgspec.json.decode(answer.body)
    assert answer.status == 200 and body["group_by"] == ["client", "model"]
    groups = {(r["client"], r["model"]): r for r in body["rows"]}
    assert groups[("team-a", "gpt-4")]["requests"] == 2 and groups[("team-b", "llama")]["unpriced"] == 1
    sheet = await call(app, "/admin/usage", method="GET", headers=ADMIN, query=query + b"&format=csv")
    assert sheet.header(b"content-type") == b"text/csv; charset=utf-8"
    table = list(csv.reader(io.StringIO(sheet.body.decode())))
    assert table[0][:4] == ["client", "model", "requests", "input_tokens"] and len(table) == 1 + len(body["rows"])
    bad = await call(app, "/admin/usage", method="GET", headers=ADMIN, query=b"group_by=colour")
    assert bad.status == 400 and b"group_by" in bad.body
    assert (await call(app, "/admin/usage", method="GET")).status == 401  # the admin token guards it


def test_megagate_usage_prints_a_table_and_a_csv(tmp_path: Path) -> None:
    db = filled(tmp_path / "usage.db")
    config = tmp_path / "megagate.toml"
    config.write_text(f'[usage]\npath = "{db}"\n[[upstreams]]\nname = "u"\nbase_url = "http://127.0.0.1:1"\n')
    env = {**os.environ, "MEGAGATE_CONFIG": str(config)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "megagate", "usage", "--since", "2026-12-01", "--until",
                               "2026-12-31", *args], env=env, capture_output=True, text=True, check=False)  # fmt: skip

    table = run("--by", "client")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:2] == ["client", "requests"] and lines[2].split()[:2] == ["team-a", "4"]
    sheet = run("--by", "model,day", "--csv")
    assert sheet.stdout.splitlines()[0].startswith("model,day,requests")
    assert run("--by", "colour").returncode == 2
