"""Chat completion chunks → the Responses API's streamed events, as an incremental state machine (no I/O, no clock).

Feed the `data` of each chat chunk (and the final `[DONE]`); get the events a Responses client expects, each with
its `sequence_number`: `response.created`, `response.in_progress`, then per output item `output_item.added`, for a
message `content_part.added`, `output_text.delta`..., `output_text.done`, `content_part.done`, for a tool call
`function_call_arguments.delta`... `.done` (or, for a custom tool, `custom_tool_call_input.delta` / `.done` once its
input is whole), `output_item.done` with the whole item, and last `response.completed` with the usage. No `[DONE]`.
`fail(error)` is the terminal `response.failed` for a stream that broke after it started (a rate limit as
`rate_limit_exceeded` with "try again in N s", which Codex retries).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from megagate.core.errors import MegagateError
from megagate.core.responses import ToolName, message_item, response_object, responses_usage, tool_item
from megagate.core.schemas import ChatCompletionChunk, FunctionCall
from megagate.core.usage import Usage, from_chat

_encoder = msgspec.json.Encoder()
_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
Json = dict[str, Any]


def responses_event(kind: str, payload: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode({"type": kind, **payload}) + b"\n\n"


def failed_response(error: MegagateError, response: Json) -> Json:
    """`response` marked failed with `error` in the Responses API's shape (OpenAI's error codes)."""
    if error.status == 429:
        wait = math.ceil(error.retry_after) if error.retry_after is not None else 1
        code, message = "rate_limit_exceeded", f"{error.message}. Please try again in {wait}s."
    else:
        code, message = "server_error", error.message
    return {**response, "status": "failed", "error": {"code": code, "message": message}}


class ChatToResponsesStream:
    """One chat stream translated to Responses events. `tools` maps chat function names back (see
    `core.responses.ChatPlan`)."""

    def __init__(self, model: str, created: int, tools: dict[str, ToolName] | None = None) -> None:
        self.model = model
        self.created = created
        self.tools = tools or {}
        self.id = "resp_megagate"
        self.sequence = 0
        self.started = False
        self.finished = False
        self.done: list[tuple[int, Json]] = []  # finished items with their output index
        self.text: Json | None = None  # the message item being written: {"index", "id", "parts"}
        self.calls: dict[int, Json] = {}  # chat tool-call index -> {"index", "id", "call_id", "name", "args"}
        self.open_calls: list[int] = []
        self.usage: Usage | None = None
        self.incomplete = False

    def _event(self, kind: str, **payload: Any) -> bytes:
        event = responses_event(kind, {**payload, "sequence_number": self.sequence})
        self.sequence += 1
        return event

    def _response(self, status: str) -> Json:
        usage = responses_usage(self.usage) if status != "in_progress" else None
        output = [item for _, item in sorted(self.done, key=lambda pair: pair[0])]
        return response_object(self.id, self.model, self.created, output, status, usage)

    def feed(self, data: bytes) -> bytes:
        return self.feed_chunk(None if data.strip() == b"[DONE]" else _chunk_decoder.decode(data))

    def feed_chunk(self, chunk: ChatCompletionChunk | None) -> bytes:
        """One chat chunk, already decoded (None: `[DONE]`); the Responses events it makes, each encoded once."""
        if chunk is None:
            return self.finish()
        out: list[bytes] = []
        if not self.started:
            self._start(chunk.id, chunk.model, out)
        if chunk.usage is not None:
            self.usage = Usage.of(from_chat(chunk.usage))
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # the Responses API has no `n`
            delta = choice.delta
            if delta.content:
                self._text_delta(delta.content, out)
            for call in delta.tool_calls or []:
                self._tool_delta(call.index or 0, call.id, call.function or FunctionCall(), out)
            if choice.finish_reason == "length":
                self.incomplete = True
        return b"".join(out)

    def _start(self, chunk_id: str | None, model: str | None, out: list[bytes]) -> None:
        """`response.created` and `response.in_progress`: a Responses stream always opens with them."""
        self.started = True
        self.id = f"resp_{chunk_id}" if chunk_id else self.id
        self.model = model or self.model
        response = self._response("in_progress")
        out += [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]  # fmt: skip

    def _next_index(self) -> int:
        return len(self.done) + (self.text is not None) + len(self.open_calls)

    def _text_delta(self, text: str, out: list[bytes]) -> None:
        if self.text is None:
            index = self._next_index()
            item_id = f"msg_{self.id.removeprefix('resp_')}_{index}"
            self.text = {"index": index, "id": item_id, "parts": []}
            item = {**message_item(item_id, "", "in_progress"), "content": []}
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._event("response.content_part.added", item_id=item_id, output_index=index,
                                   content_index=0, part=part))  # fmt: skip
        self.text["parts"].append(text)
        out.append(self._event("response.output_text.delta", item_id=self.text["id"],
                               output_index=self.text["index"], content_index=0, delta=text, logprobs=[]))  # fmt: skip

    def _tool_delta(self, index: int, call_id: str | None, function: FunctionCall, out: list[bytes]) -> None:
        call = self.calls.get(index)
        if call is None:
            self._close_text(out)
            position = self._next_index()
            call = self.calls[index] = {"index": position, "id": f"fc_{self.id.removeprefix('resp_')}_{position}",
                                        "call_id": call_id or f"call_{position}", "name": function.name or "",
                                        "args": []}  # fmt: skip
            self.open_calls.append(index)
            item = tool_item(call["id"], call["call_id"], call["name"], "", self.tools)
            item["status"] = "in_progress"
            out.append(self._event("response.output_item.added", output_index=position, item=item))
        if function.arguments:
            call["args"].append(function.arguments)
            if not self._custom(call):  # a custom tool's input is inside a JSON string: told whole, at the end
                out.append(self._event("response.function_call_arguments.delta", item_id=call["id"],
                                       output_index=call["index"], delta=function.arguments))  # fmt: skip

    def _custom(self, call: Json) -> bool:
        known = self.tools.get(call["name"])
        return known is not None and known.kind == "custom"

    def _close_text(self, out: list[bytes]) -> None:
        if self.text is None:
            return
        text, index, item_id = "".join(self.text["parts"]), self.text["index"], self.text["id"]
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        out += [
            self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                        text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                        part=part),
        ]  # fmt: skip
        item = message_item(item_id, text)
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self.done.append((index, item))
        self.text = None

    def _close_calls(self, out: list[bytes]) -> None:
        for index in self.open_calls:
            call = self.calls[index]
            arguments = "".join(call["args"])
            item = tool_item(call["id"], call["call_id"], call["name"], arguments, self.tools)
            ids = {"item_id": call["id"], "output_index": call["index"]}
            if item["type"] == "custom_tool_call":
                out.append(self._event("response.custom_tool_call_input.delta", **ids, delta=item["input"]))
                out.append(self._event("response.custom_tool_call_input.done", **ids, input=item["input"]))
            else:
                out.append(self._event("response.function_call_arguments.done", **ids, arguments=arguments))
            out.append(self._event("response.output_item.done", output_index=call["index"], item=item))
            self.done.append((call["index"], item))
        self.open_calls = []

    def finish(self) -> bytes:
        """Close what is open and complete the response (also what `[DONE]` does)."""
        if self.finished:
            return b""
        self.finished = True
        out: list[bytes] = []
        if not self.started:  # an upstream that ended at once (`[DONE]` first) still gets a whole response
            self._start(None, None, out)
        self._close_text(out)
        self._close_calls(out)
        status = "incomplete" if self.incomplete else "completed"
        out.append(self._event(f"response.{status}", response=self._response(status)))
        return b"".join(out)

    def fail(self, error: MegagateError) -> bytes:
        """The terminal event of a stream that broke after it started."""
        if self.finished:
            return b""
        self.finished = True
        return self._event("response.failed", response=failed_response(error, self._response("failed")))
