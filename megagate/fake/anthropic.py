"""The fake upstream's Anthropic side: `/v1/messages` (plain and SSE, text and tool_use) and `count_tokens`.

Written with plain dicts from Anthropic's published wire format, on purpose independent of megagate's own
`core.anthropic` and translation code, so tests of the translation compare against an outside reference.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

_encoder = msgspec.json.Encoder()
TOOL_INPUT = {"location": "Paris", "unit": "celsius"}


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode({"type": kind, **payload}) + b"\n\n"


def error_body(status: int, message: str) -> bytes:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}  # fmt: skip
    kind = kinds.get(status, "api_error")
    return _encoder.encode({"type": "error", "error": {"type": kind, "message": message}})


def chosen_tool(names: list[str], fault: Any) -> str | None:
    """The offered tool to call: the one the fault names, else the first; none for `tool = "none"` (both fakes)."""
    if fault.tool == "none" or not names:
        return None
    return fault.tool if fault.tool in names else names[0]


def first_tool(payload: dict[str, Any], fault: Any) -> tuple[str, Any] | None:
    """Call the tool the fault names (else the first offered), unless the conversation already ends with a tool
    result. Returns the tool's name and input."""
    tools = payload.get("tools")
    messages = payload.get("messages") or [{}]
    content = messages[-1].get("content")
    answered = isinstance(content, list) and any(b.get("type") == "tool_result" for b in content if isinstance(b, dict))
    if not tools or answered or (payload.get("tool_choice") or {}).get("type") == "none":
        return None
    name = chosen_tool([str(t.get("name", "tool")) for t in tools if isinstance(t, dict)], fault)
    return (name, fault.tool_input or TOOL_INPUT) if name is not None else None


def count_tokens(payload: dict[str, Any]) -> bytes:
    return _encoder.encode({"input_tokens": len(_encoder.encode(payload.get("messages"))) // 4})


def input_usage(payload: dict[str, Any], fault: Any) -> dict[str, int]:
    """The input side of Anthropic's usage: `input_tokens` excludes the cache, whose reads and writes come beside
    it (a stream tells them in message_start only, as Anthropic does)."""
    usage = {"input_tokens": len(_encoder.encode(payload.get("messages"))) // 4}
    if fault.caching is not None:
        usage["cache_read_input_tokens"] = fault.caching.read
        usage["cache_creation_input_tokens"] = fault.caching.write
    return usage


def message(ident: str, payload: dict[str, Any], words: list[str], fault: Any) -> bytes:
    tool = first_tool(payload, fault)
    usage = {**input_usage(payload, fault), "output_tokens": len(words)}
    if tool is not None:
        content: list[dict[str, Any]] = [{"type": "tool_use", "id": "toolu_fake_1", "name": tool[0], "input": tool[1]}]
        stop = "tool_use"
    else:
        content, stop = [{"type": "text", "text": "".join(words)}], "end_turn"
    answer = {"id": ident, "type": "message", "role": "assistant", "model": payload.get("model"), "content": content,
              "stop_reason": stop, "stop_sequence": None, "usage": usage}  # fmt: skip
    return _encoder.encode(answer)


async def stream(ident: str, payload: dict[str, Any], words: list[str], fault: Any, send: Any) -> None:
    tool = first_tool(payload, fault)

    async def emit(body: bytes, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": more})

    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    start: dict[str, Any] = {
        "id": ident, "type": "message", "role": "assistant", "model": payload.get("model"), "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**input_usage(payload, fault), "output_tokens": 1},
    }  # fmt: skip
    await emit(event("message_start", {"message": start}) + event("ping", {}))
    if tool is not None:
        block = {"type": "tool_use", "id": "toolu_fake_1", "name": tool[0], "input": {}}
        arguments = _encoder.encode(tool[1]).decode()
        step = max(1, len(arguments) // 3)
        deltas = [
            {"type": "input_json_delta", "partial_json": arguments[i : i + step]}
            for i in range(0, len(arguments), step)
        ]
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": word} for word in words]
        stop = "end_turn"
    await emit(event("content_block_start", {"index": 0, "content_block": block}))
    for sent, delta in enumerate(deltas):
        if fault.drop_after is not None and sent == fault.drop_after:
            raise ConnectionAbortedError("fake upstream: dropping the connection as scripted")
        if fault.error_after is not None and sent == fault.error_after:
            await emit(
                event("error", {"error": {"type": "overloaded_error", "message": "fake upstream: scripted"}}), False
            )
            return
        if fault.stall_after is not None and sent == fault.stall_after:
            await anyio.sleep_forever()
        if fault.chunk_delay:
            await anyio.sleep(fault.chunk_delay)
        await emit(event("content_block_delta", {"index": 0, "delta": delta}))
    usage = {"output_tokens": len(words)}
    tail = event("content_block_stop", {"index": 0})
    tail += event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage})
    await emit(tail + event("message_stop", {}), False)
