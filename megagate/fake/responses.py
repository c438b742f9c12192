"""The fake upstream's Responses API side (`/v1/responses`, plain and SSE) and `/v1/embeddings`.

Written with plain dicts from OpenAI's published wire format, independent of megagate's own `core.responses`, so
that a real Responses client (Codex CLI) can be captured against it and megagate's passthrough tested against an
outside reference. It answers text, or a call of the tool a fault names (else the first function or custom tool
offered) unless the input already ends with that call's output.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec

_encoder = msgspec.json.Encoder()


def _tool_call(payload: dict[str, Any], fault: Any) -> dict[str, Any] | None:
    tools = [t for t in payload.get("tools") or [] if isinstance(t, dict) and t.get("type") in ("function", "custom")]
    items = payload.get("input")
    last = items[-1] if isinstance(items, list) and items else {}
    answered = isinstance(last, dict) and str(last.get("type", "")).endswith("_output")
    if not tools or answered or fault.tool == "none":
        return None
    tool = next((t for t in tools if t.get("name") == fault.tool), tools[0])
    given = fault.tool_input or {"command": "echo megagate"}
    if tool["type"] == "custom":
        text = given.get("input", "") if isinstance(given, dict) else str(given)
        return {"type": "custom_tool_call", "id": "ctc_fake_1", "call_id": "call_fake_1", "name": tool["name"],
                "input": text, "status": "completed"}  # fmt: skip
    return {"type": "function_call", "id": "fc_fake_1", "call_id": "call_fake_1", "name": tool["name"],
            "arguments": _encoder.encode(given).decode(), "status": "completed"}  # fmt: skip


def _response(
    ident: str, payload: dict[str, Any], output: list[Any], status: str, words: int, fault: Any
) -> dict[str, Any]:
    read, reasoning = (fault.caching.read, fault.caching.reasoning) if fault.caching else (0, 0)
    prompt = len(_encoder.encode(payload.get("input"))) // 4 + read
    usage = {"input_tokens": prompt, "output_tokens": words, "total_tokens": prompt + words,
             "input_tokens_details": {"cached_tokens": read},
             "output_tokens_details": {"reasoning_tokens": reasoning}}  # fmt: skip
    return {"id": ident, "object": "response", "created_at": int(time.time()), "model": payload.get("model"),
            "status": status, "output": output, "usage": usage if status != "in_progress" else None,
            "error": None, "incomplete_details": None, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": []}  # fmt: skip


def answer(ident: str, payload: dict[str, Any], words: list[str], fault: Any) -> bytes:
    call = _tool_call(payload, fault)
    text = {"type": "output_text", "text": "".join(words), "annotations": []}
    item = call or {"type": "message", "id": "msg_fake_1", "role": "assistant", "status": "completed",
                    "content": [text]}  # fmt: skip
    return _encoder.encode(_response(ident, payload, [item], "completed", len(words), fault))


async def stream(ident: str, payload: dict[str, Any], words: list[str], fault: Any, send: Any) -> None:
    sequence = 0

    async def emit(kind: str, more: bool = True, **fields: Any) -> None:
        nonlocal sequence
        data = _encoder.encode({"type": kind, "sequence_number": sequence, **fields})
        sequence += 1
        await send({"type": "http.response.body", "body": b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n",
                    "more_body": more})  # fmt: skip

    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await emit("response.created", response=_response(ident, payload, [], "in_progress", 0, fault))
    await emit("response.in_progress", response=_response(ident, payload, [], "in_progress", 0, fault))
    call = _tool_call(payload, fault)
    if call is not None:
        await emit("response.output_item.added", output_index=0, item={**call, "status": "in_progress"})
        await emit("response.output_item.done", output_index=0, item=call)
        await emit("response.completed", False, response=_response(ident, payload, [call], "completed", 1, fault))
        return
    item = {"type": "message", "id": "msg_fake_1", "role": "assistant", "status": "in_progress", "content": []}
    await emit("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    await emit("response.content_part.added", item_id="msg_fake_1", output_index=0, content_index=0, part=part)
    for sent, word in enumerate(words):
        if fault.drop_after is not None and sent == fault.drop_after:
            raise ConnectionAbortedError("fake upstream: dropping the connection as scripted")
        if fault.chunk_delay:
            await anyio.sleep(fault.chunk_delay)
        await emit("response.output_text.delta", item_id="msg_fake_1", output_index=0, content_index=0, delta=word,
                   logprobs=[])  # fmt: skip
    text = "".join(words)
    await emit("response.output_text.done", item_id="msg_fake_1", output_index=0, content_index=0, text=text,
               logprobs=[])  # fmt: skip
    done = {**part, "text": text}
    await emit("response.content_part.done", item_id="msg_fake_1", output_index=0, content_index=0, part=done)
    finished = {**item, "status": "completed", "content": [done]}
    await emit("response.output_item.done", output_index=0, item=finished)
    await emit(
        "response.completed", False, response=_response(ident, payload, [finished], "completed", len(words), fault)
    )


def embeddings(payload: dict[str, Any]) -> bytes:
    given = payload.get("input")
    inputs = given if isinstance(given, list) else [given]
    data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]} for i in range(len(inputs))]
    tokens = len(_encoder.encode(given)) // 4 or 1
    return _encoder.encode({"object": "list", "data": data, "model": payload.get("model"),
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip
