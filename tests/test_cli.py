"""The command line: `megagate check-config` prints the resolved configuration with no secret, or one line and 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GOOD = """
admin_token = "admin-token-never-printed"
[[upstreams]]
name = "megallm"
base_url = "https://user:hunter2@ai.megallm.io"
keys = ["sk-mega-check-config-secret-1111", { key = "sk-mega-check-config-secret-2222", tier = "pro" }]
[[clients]]
name = "ci-bot"
key = "client-key-never-printed"
rpm = 60
[fallbacks]
"gpt-5" = ["claude-opus-4-1"]
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGALLM", "MEGAGATE"))}
    return subprocess.run([sys.executable, "-m", "megagate", *args], capture_output=True, text=True, check=False,
                          timeout=30, env=env)  # fmt: skip


def test_check_config_prints_the_configuration_masked(tmp_path: Path) -> None:
    path = tmp_path / "megagate.toml"
    path.write_text(GOOD)
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "upstream megallm: https://user:***@ai.megallm.io" in out and "sk-mega-…1111" in out
    assert "tier pro, rpm 300, tpm 450000, concurrency 40" in out and "ci-bot (rpm 60)" in out
    assert "gpt-5 -> claude-opus-4-1" in out and "admin routes: on" in out
    for secret in ("check-config-secret", "hunter2", "admin-token-never-printed", "client-key-never-printed"):
        assert secret not in out + result.stderr


def test_check_config_on_a_bad_file_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('tier = "pro"', 'tier = "platinum"'))
    result = run("check-config", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "upstreams[0].keys[1]" in result.stderr
