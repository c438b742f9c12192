"""The installed Claude Code itself, end to end through megagate (opt-in: `pytest -m agents`).

Claude Code talks only to 127.0.0.1 here: `ANTHROPIC_BASE_URL` is a megagate process whose one upstream is the
fake, in the OpenAI format only, so every turn is translated both ways. The fake answers the first turn with a Bash
tool call; Claude Code runs it and sends the tool result, which must reach the upstream as an OpenAI `tool` message
carrying the command's real output. Set MEGAGATE_CLAUDE to the `claude` binary (else it is looked up on PATH).
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
CLAUDE = os.environ.get("MEGAGATE_CLAUDE") or shutil.which("claude")


@pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (npm @anthropic-ai/claude-code)")
def test_claude_code_runs_a_tool_loop_through_megagate(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path
) -> None:
    assert CLAUDE is not None
    config = f"""
[[upstreams]]
name = "openai-only"
base_url = "{fake_upstream.url}/v1"
format = "openai"
keys = ["sk-mega-claude-code-live-1111"]
"""
    gateway = start_gateway(tmp_path, config)
    fake.add_rule({"tool": "Bash", "tool_input": {"command": "echo megagate-tool-ok", "description": "echo"}},
                  times=1)  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": "sk-ant-not-a-real-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    command = [CLAUDE, "-p", "Run the command: echo megagate-tool-ok", "--allowedTools", "Bash", "--model", "gpt-5",
               "--output-format", "stream-json", "--verbose", "--include-partial-messages"]  # fmt: skip
    try:
        done = subprocess.run(command, check=False, env=env, cwd=home, capture_output=True, text=True, timeout=180)
    finally:
        gateway.stop()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next(e for e in events if e.get("type") == "result")
    assert result["subtype"] == "success" and result["result"] == " ".join(WORDS)
    assert any(e.get("type") == "stream_event" for e in events)  # partial messages arrived as a stream
    turns = [r["body"] for r in fake.requests() if r["path"] == "/v1/chat/completions"]
    assert len(turns) == 2 and turns[0]["stream"] is True
    tool_messages = [m for m in turns[1]["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_call_id"] == "call_fake_1"
    assert "megagate-tool-ok" in tool_messages[0]["content"]  # the command really ran, its output came back
