"""Re-capture what real clients send: `python -m tests.clients.capture [--claude PATH] [--only NAME]`.

Each client runs against the in-repo fake upstream (`megagate.fake`, which records every request) on 127.0.0.1,
never the internet; each scenario's requests are written to `tests/clients/fixtures/<client>-<version>-<scenario>
.json` with the client's own headers (auth values redacted) and bodies as sent. `test_replay.py` replays them all
through megagate. Run it again when a client releases a new version and commit the new files beside the old.

Clients: Claude Code (npm `@anthropic-ai/claude-code`; pass its `claude` binary with --claude, or have it on PATH),
Codex CLI (npm `@openai/codex`, --codex or on PATH),
the `openai` and `anthropic` SDKs, LangChain's `ChatOpenAI` and `ChatAnthropic` (`pip install langchain-openai
langchain-anthropic`; skipped when not installed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tests.conftest import FakeControl, start_fake

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REDACTED_HEADERS = frozenset({"authorization", "x-api-key"})
DROPPED_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})
CLAUDE_MODEL = "claude-opus-4-1-20250805"  # a MegaLLM model id
# Claude Code adds a `system`-role message to `messages` (and the mid-conversation-system beta) for any model name
# it does not know, which is every MegaLLM id but a few; gpt-5 is also the model a user would translate to.
CLAUDE_CODE_MODEL = "gpt-5"
OPENAI_MODEL = "gpt-5"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}

Scenario = Callable[[str, FakeControl], None]


def _clean(headers: dict[str, str]) -> dict[str, str]:
    kept = {k: ("<redacted>" if k in REDACTED_HEADERS else v) for k, v in headers.items() if k not in DROPPED_HEADERS}
    return dict(sorted(kept.items()))


def _write(client: str, version: str, scenario: str, how: str, fake: FakeControl) -> Path:
    requests = [
        {"method": "POST", "path": r["path"], "headers": _clean(r["headers"]), "body": r["body"]}
        for r in fake.requests()
        if r["path"].startswith("/v1/") and isinstance(r["body"], dict)
    ]
    if not requests:
        raise RuntimeError(f"{client} {scenario}: the client sent no request")
    document = {
        "client": client,
        "version": version,
        "scenario": scenario,
        "captured": f"{datetime.date.today().isoformat()} by tests/clients/capture.py: {how}",
        "requests": requests,
    }
    path = FIXTURES / f"{client}-{version}-{scenario}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    return path


# --- Claude Code ------------------------------------------------------------------------------------------------


def claude_code(binary: str) -> dict[str, tuple[str, Scenario]]:
    def run(args: list[str]) -> Scenario:
        def scenario(url: str, fake: FakeControl) -> None:
            with tempfile.TemporaryDirectory() as home:
                env = {
                    "PATH": os.environ.get("PATH", ""),
                    "HOME": home,
                    "ANTHROPIC_BASE_URL": url,
                    "ANTHROPIC_API_KEY": "sk-ant-capture-not-a-key",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1",
                    "DISABLE_AUTOUPDATER": "1",
                }
                command = [binary, "-p", *args, "--model", CLAUDE_CODE_MODEL]
                subprocess.run(command, env=env, cwd=home, capture_output=True, timeout=120, check=True)

        return scenario

    def tool_turn(url: str, fake: FakeControl) -> None:
        fake.add_rule({"tool": "Bash", "tool_input": {"command": "echo megagate-tool-ok", "description": "echo"}},
                      times=1)  # fmt: skip
        run(["Run the command: echo megagate-tool-ok", "--allowedTools", "Bash"])(url, fake)

    how = f"claude -p ... --model {CLAUDE_CODE_MODEL}, ANTHROPIC_BASE_URL at the fake, empty HOME"
    return {
        "plain": (how, run(["Count slowly."])),
        "stream-json": (
            how + ", --output-format stream-json --verbose --include-partial-messages",
            run(["Count slowly.", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]),
        ),
        "tool-turn": (how + ", the fake answers with a Bash tool call, then text", tool_turn),
    }


# --- Codex CLI ------------------------------------------------------------------------------------------------

PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from megagate\n*** End Patch\n"


def codex(binary: str) -> dict[str, tuple[str, Scenario]]:
    """Codex CLI with a custom provider (`wire_api = "responses"`) in a temporary CODEX_HOME: one `POST
    {base_url}/responses` per turn. Which tools it sends depends on the model name (gpt-5: namespace + web_search;
    gpt-5.5, which it knows: the freeform apply_patch tool, tool_search, reasoning effort, text verbosity)."""

    def run(prompt: str, model: str) -> Scenario:
        def scenario(url: str, fake: FakeControl) -> None:
            with tempfile.TemporaryDirectory() as home:
                work = Path(home) / "work"
                work.mkdir()
                (Path(home) / "config.toml").write_text(
                    f'model = "{model}"\nmodel_provider = "megagate"\n\n[model_providers.megagate]\n'
                    f'name = "megagate"\nbase_url = "{url}/v1"\nwire_api = "responses"\nenv_key = "MEGAGATE_KEY"\n'
                )
                env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "CODEX_HOME": home, "MEGAGATE_KEY": "sk-x"}
                command = [
                    binary,
                    "exec",
                    "--skip-git-repo-check",
                    "--json",
                    "--dangerously-bypass-approvals-and-sandbox",
                    prompt,
                ]
                subprocess.run(command, env=env, cwd=work, capture_output=True, timeout=120, check=True,
                               stdin=subprocess.DEVNULL)  # fmt: skip

        return scenario

    def plain(url: str, fake: FakeControl) -> None:
        fake.add_rule({"tool": "none"}, path="/v1/responses")
        run("Say hi.", "gpt-5")(url, fake)

    def tool_turn(url: str, fake: FakeControl) -> None:
        fake.add_rule({"tool": "exec_command", "tool_input": {"cmd": "echo megagate-tool-ok"}}, times=1)
        run("Run: echo megagate-tool-ok", "gpt-5")(url, fake)

    def apply_patch(url: str, fake: FakeControl) -> None:
        fake.add_rule({"tool": "apply_patch", "tool_input": {"input": PATCH}}, times=1)
        run("Create hello.txt.", "gpt-5.5")(url, fake)

    how = (
        "codex exec --json --dangerously-bypass-approvals-and-sandbox (commands scripted by the fake), "
        "a custom responses provider at the fake, empty CODEX_HOME"
    )
    return {
        "plain": (how + ", model gpt-5, a text answer", plain),
        "tool-turn": (how + ", model gpt-5, an exec_command call, then its output", tool_turn),
        "apply-patch": (how + ", model gpt-5.5, the freeform apply_patch tool, then its output", apply_patch),
    }


# --- SDKs and LangChain -----------------------------------------------------------------------------------------


def openai_sdk(url: str, fake: FakeControl) -> None:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-capture", max_retries=0)
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this, and the weather?"}, image]},
    ]
    tools: Any = [{"type": "function", "function": WEATHER}]
    first = client.chat.completions.create(model=OPENAI_MODEL, messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]  # fmt: skip
    client.chat.completions.create(model=OPENAI_MODEL, messages=messages, tools=tools)
    stream = client.chat.completions.create(
        model=OPENAI_MODEL, messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
    )
    for _ in stream:
        pass


def anthropic_sdk(url: str, fake: FakeControl) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="sk-ant-capture", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}
    tools: Any = [{"name": WEATHER["name"], "description": WEATHER["description"],
                   "input_schema": WEATHER["parameters"]}]  # fmt: skip
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    first = client.messages.create(model=CLAUDE_MODEL, max_tokens=200, system="Be brief.", messages=messages,
                                   tools=tools)  # fmt: skip
    use = next(block for block in first.content if block.type == "tool_use")
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [result]}]  # fmt: skip
    with client.messages.stream(model=CLAUDE_MODEL, max_tokens=200, messages=messages, tools=tools) as stream:
        stream.get_final_message()
    client.messages.count_tokens(model=CLAUDE_MODEL, messages=messages)


def langchain_openai(url: str, fake: FakeControl) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=OPENAI_MODEL, base_url=url + "/v1", api_key="sk-capture", max_retries=0)  # type: ignore[arg-type]
    chat.invoke("Say hi.")
    for _ in chat.stream("Say hi."):
        pass
    chat.bind_tools([{"type": "function", "function": WEATHER}]).invoke("Weather in Paris?")
    responses = ChatOpenAI(model=OPENAI_MODEL, base_url=url + "/v1", api_key="sk-capture", max_retries=0,  # type: ignore[arg-type]
                           use_responses_api=True)  # fmt: skip
    responses.invoke("Say hi.")
    for _ in responses.stream("Say hi."):
        pass


def langchain_anthropic(url: str, fake: FakeControl) -> None:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(model=CLAUDE_MODEL, base_url=url, api_key="sk-ant-capture", max_retries=0)  # type: ignore[call-arg,arg-type]
    chat.invoke("Say hi.")
    for _ in chat.stream("Say hi."):
        pass
    chat.bind_tools([{"type": "function", "function": WEATHER}]).invoke("Weather in Paris?")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def scenarios(claude: str | None, codex_binary: str | None) -> list[tuple[str, str, str, str, Scenario]]:
    """(client, version, scenario, how, run) for every client found."""
    found: list[tuple[str, str, str, str, Scenario]] = []
    if claude:
        version = subprocess.run([claude, "--version"], capture_output=True, text=True, check=True).stdout.split()[0]
        found += [("claude-code", version, name, how, run) for name, (how, run) in claude_code(claude).items()]
    if codex_binary:
        version = subprocess.run([codex_binary, "--version"], capture_output=True, text=True, check=True).stdout
        version = version.split()[-1]
        found += [("codex-cli", version, name, how, run) for name, (how, run) in codex(codex_binary).items()]
    python = [
        ("openai-python", "openai", openai_sdk, "chat.completions.create: image + tools, tool result, stream"),
        ("anthropic-python", "anthropic", anthropic_sdk, "messages.create: image + tools, tool result, stream, count"),
        (
            "langchain-openai",
            "langchain-openai",
            langchain_openai,
            "ChatOpenAI: invoke, stream, bind_tools; use_responses_api=True: invoke, stream",
        ),
        ("langchain-anthropic", "langchain-anthropic", langchain_anthropic, "ChatAnthropic: invoke, stream, tools"),
    ]
    for client, package, run, how in python:
        if (version := _version(package)) is not None:
            found.append((client, version, "sdk", how, run))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.clients.capture", description=__doc__.splitlines()[0])
    parser.add_argument("--claude", default=shutil.which("claude"), help="the Claude Code binary")
    parser.add_argument("--codex", default=shutil.which("codex"), help="the Codex CLI binary")
    parser.add_argument("--only", help="capture only this client")
    args = parser.parse_args(argv)
    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fake_process = start_fake(Path(tmp))
        fake = FakeControl(fake_process.url)
        try:
            for client, version, name, how, run in scenarios(args.claude, args.codex):
                if args.only and client != args.only:
                    continue
                fake.reset()
                run(fake_process.url, fake)
                print(_write(client, version, name, how, fake).relative_to(Path.cwd()), file=sys.stderr)
        finally:
            fake_process.stop()


if __name__ == "__main__":
    main()
