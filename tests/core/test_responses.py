"""Responses API ⇄ chat translation: the stream means what the whole answer means, and tool names and call ids
survive every round trip (flattened namespace tools and freeform custom tools included)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megagate.core.errors import InvalidRequest, UpstreamStatus
from megagate.core.responses import chat_to_responses_answer, responses_to_chat_request
from megagate.core.responses_stream import ChatToResponsesStream
from megagate.core.sse import SSEDecoder

TOOLS: list[Any] = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
    {"type": "namespace", "name": "multi_agent_v1", "tools": [{"type": "function", "name": "spawn_agent"}]},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "definition": "start: /.+/"}},
    {"type": "web_search"},
]
CHAT_NAMES = ["exec_command", "multi_agent_v1__spawn_agent", "apply_patch"]


def plan() -> Any:
    return responses_to_chat_request({"model": "m", "input": "hi", "tools": TOOLS})


def test_tools_are_flattened_and_hosted_ones_dropped() -> None:
    chat = plan()
    assert [t["function"]["name"] for t in chat.body["tools"]] == CHAT_NAMES
    assert chat.dropped_tools == ["web_search"]
    custom = chat.body["tools"][2]["function"]
    assert custom["parameters"]["required"] == ["input"] and "start: /.+/" in custom["description"]


def test_history_items_become_chat_messages_with_their_call_ids() -> None:
    body = {"model": "m", "instructions": "rules", "tools": TOOLS, "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"},
                                                         {"type": "input_image", "image_url": "data:x"}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "spawn_agent", "namespace": "multi_agent_v1",
         "arguments": "{}"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "done"}]},
    ]}  # fmt: skip
    messages = responses_to_chat_request(body).body["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "tool", "tool"]
    calls = messages[3]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [("c1", "multi_agent_v1__spawn_agent"),
                                                                 ("c2", "apply_patch")]  # fmt: skip
    assert msgspec.json.decode(calls[1]["function"]["arguments"]) == {"input": "*** Begin Patch"}
    assert messages[4] == {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    assert messages[5]["content"] == "done" and messages[2]["content"][1]["type"] == "image_url"


def test_what_cannot_be_translated_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat_request({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})
    assert caught.value.param == "input[0].type"
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat_request({"model": "m", "input": "x", "previous_response_id": "resp_1"})
    assert caught.value.param == "previous_response_id"


def completion(text: str | None, calls: list[tuple[str, str, str]], usage: tuple[int, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in calls]  # fmt: skip
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
    counted = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return {"id": "c9", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice], "usage": counted}


def chunks(answer: dict[str, Any], cut: int) -> list[bytes]:
    """The same answer as a chat stream, text and arguments cut every `cut` characters."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": "c9", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
        return msgspec.json.encode({**body, "usage": usage} if usage else body)

    message = answer["choices"][0]["message"]
    out = [chunk({"role": "assistant", "content": ""})]
    text = message["content"] or ""
    out += [chunk({"content": text[i : i + cut]}) for i in range(0, len(text), cut)]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        out.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                          "function": {"name": function["name"], "arguments": ""}}]}))  # fmt: skip
        arguments = function["arguments"]
        out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + cut]}}]})
                for i in range(0, len(arguments), cut)]  # fmt: skip
    out.append(chunk({}, answer["choices"][0]["finish_reason"]))
    out.append(chunk({}, usage=answer["usage"]))
    return [*out, b"[DONE]"]


def streamed_response(data: list[bytes], tools: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    translator = ChatToResponsesStream("m", 1, tools)
    decoder = SSEDecoder()
    events = [msgspec.json.decode(e.data) for d in data for e in decoder.receive_data(translator.feed(d))[1]]
    assert translator.finished and events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events[-1]["response"], events


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


names = st.sampled_from(CHAT_NAMES)
arguments = st.sampled_from(['{"cmd":"ls"}', '{"input":"*** Begin Patch\\n+x\\n*** End Patch"}', "{}", "not json"])
calls = st.lists(st.tuples(st.text("abc123_", min_size=1, max_size=8), names, arguments), max_size=3,
                 unique_by=lambda c: c[0])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(text=st.none() | st.text(min_size=1, max_size=40), calls=calls, cut=st.integers(1, 7),
       usage=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)))  # fmt: skip
def test_a_streamed_answer_means_what_the_whole_answer_means(
    text: str | None, calls: list[tuple[str, str, str]], cut: int, usage: tuple[int, int]
) -> None:
    tools = plan().tools
    answer = completion(text, calls, usage)
    whole = msgspec.json.decode(chat_to_responses_answer(msgspec.json.encode(answer), tools, 1))
    streamed, events = streamed_response(chunks(answer, cut), tools)
    assert without_ids(streamed["output"]) == without_ids(whole["output"])
    assert streamed["usage"] == whole["usage"] and streamed["status"] == whole["status"] == "completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == (text or "")
    for item in whole["output"]:  # names and call ids survive: the Responses side sees its own tools
        if item["type"] == "message":
            continue
        _, chat_name, raw = next(c for c in calls if c[0] == item["call_id"])
        if chat_name == "apply_patch":
            assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
            assert item["input"] == (msgspec.json.decode(raw)["input"] if '"input"' in raw else raw)
        else:
            assert item["type"] == "function_call" and item["arguments"] == raw
            assert (item.get("namespace"), item["name"]) == (
                ("multi_agent_v1", "spawn_agent") if chat_name.startswith("multi") else (None, chat_name)
            )


def test_a_rate_limit_after_the_start_fails_the_response_with_a_retry_hint() -> None:
    translator = ChatToResponsesStream("m", 1)
    translator.feed(chunks(completion("hi", [], (1, 1)), 1)[0])
    failed = translator.fail(UpstreamStatus(429, "slow down", retry_after=2.5))
    event = msgspec.json.decode(SSEDecoder().receive_data(failed)[1][0].data)
    assert event["type"] == "response.failed" and event["sequence_number"] == 2
    assert event["response"]["error"]["code"] == "rate_limit_exceeded"
    assert "try again in 3s" in event["response"]["error"]["message"]
