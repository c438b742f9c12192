"""The installed Codex CLI itself, end to end through megagate (opt-in: `pytest -m agents`).

Codex speaks only the Responses API; here its custom provider is a megagate process whose one upstream is the fake
in the chat-completions format only (MegaLLM's case), so every turn is translated both ways. The fake answers the
first turn with an `exec_command` call; Codex runs it and sends the `function_call_output` turn, which must reach
the upstream as a chat `tool` message with the same call id and the command's real output. Set MEGAGATE_CODEX to
the `codex` binary (else it is looked up on PATH).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from megagate.fake import WORDS
from tests.conftest import FakeControl, Process, start_gateway

pytestmark = pytest.mark.agents
CODEX = os.environ.get("MEGAGATE_CODEX") or shutil.which("codex")


@pytest.mark.skipif(CODEX is None, reason="Codex CLI is not installed (npm @openai/codex)")
def test_codex_runs_a_tool_loop_through_megagate(fake_upstream: Process, fake: FakeControl, tmp_path: Path) -> None:
    assert CODEX is not None
    config = f"""
[[upstreams]]
name = "chat-only"
base_url = "{fake_upstream.url}/v1"
format = "openai"
keys = ["sk-mega-codex-live-1111"]
"""
    gateway = start_gateway(tmp_path, config)
    fake.add_rule({"tool": "exec_command", "tool_input": {"cmd": "echo megagate-tool-ok"}}, times=1)
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-5"\nmodel_provider = "megagate"\n\n[model_providers.megagate]\nname = "megagate"\n'
        f'base_url = "{gateway.url}/v1"\nwire_api = "responses"\nenv_key = "MEGAGATE_KEY"\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CODEX_HOME": str(home), "MEGAGATE_KEY": "x"}
    command = [CODEX, "exec", "--skip-git-repo-check", "--json", "--dangerously-bypass-approvals-and-sandbox",
               "Run: echo megagate-tool-ok"]  # fmt: skip
    try:
        done = subprocess.run(command, check=False, env=env, cwd=work, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    finally:
        gateway.stop()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    messages = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "agent_message"]  # fmt: skip
    assert messages[-1] == " ".join(WORDS)  # the upstream's answer, printed by Codex
    assert any(e.get("type") == "turn.completed" and e["usage"]["output_tokens"] > 0 for e in events)
    turns = [r["body"] for r in fake.requests() if r["path"] == "/v1/chat/completions"]
    assert len(turns) == 2 and turns[0]["stream"] is True and turns[0]["stream_options"] == {"include_usage": True}
    tool_messages = [m for m in turns[1]["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_call_id"] == "call_fake_1"
    assert "megagate-tool-ok" in tool_messages[0]["content"]  # the command really ran, its output came back
