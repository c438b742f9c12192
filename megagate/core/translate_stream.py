"""OpenAI chat chunks ⇄ Anthropic Messages stream events, as incremental state machines (no I/O, no clock).

Each translator is fed one upstream SSE event at a time and returns the bytes of zero or more client-format SSE
events, so a translated stream is still relayed event by event. Text deltas map to text deltas, streamed tool-call
arguments to `input_json_delta` (and back), stop reasons and usage to their counterparts. Usage arrives last on
the OpenAI side, so the Anthropic stream reports it in `message_delta` (input and output tokens), which the
Anthropic SDKs read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from megagate.core import anthropic
from megagate.core.errors import MegagateError
from megagate.core.reasoning import ThinkingInStream
from megagate.core.schemas import ChatCompletionChunk, ChunkChoice, Delta, FunctionCall, ToolCall
from megagate.core.translate import FINISH_TO_STOP, STOP_TO_FINISH
from megagate.core.usage import ChatUsage, MessageUsage, Usage, from_chat, from_message, to_chat, to_message

_encoder = msgspec.json.Encoder()
_chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
DONE = b"data: [DONE]\n\n"


def anthropic_event(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"


class OpenAIToAnthropicStream:
    """Feed the `data` of each OpenAI chunk (and the final `[DONE]`); get Anthropic events."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.finished = False
        self.block = -1  # index of the last content block opened
        self.open = False
        self.text_block: int | None = None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool-call index -> content block index
        self.stop_reason = "end_turn"
        self.usage = Usage()

    def feed(self, data: bytes) -> bytes:
        if data.strip() == b"[DONE]":
            return self.finish()
        chunk = _chunk_decoder.decode(data)
        out: list[bytes] = []
        if not self.started:
            self.started = True
            message = anthropic.Message(chunk.id, chunk.model or self.model, [], None, MessageUsage(0, 0))
            out.append(anthropic_event("message_start", {"type": "message_start", "message": message}))
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # Anthropic has no `n`: only the first choice is told
            delta = choice.delta
            if delta.content:
                if self.text_block is None or self.block != self.text_block:
                    self._close(out)
                    self.text_block = self._open(out, anthropic.ContentBlock(type="text", text=""))
                out.append(self._delta(self.text_block, anthropic.Delta(type="text_delta", text=delta.content)))
            for call in delta.tool_calls or []:
                index = call.index or 0
                function = call.function or FunctionCall()
                if index not in self.tool_blocks:
                    self._close(out)
                    block = anthropic.ContentBlock(type="tool_use", id=call.id, name=function.name, input={})
                    self.tool_blocks[index] = self._open(out, block)
                if function.arguments:
                    json_delta = anthropic.Delta(type="input_json_delta", partial_json=function.arguments)
                    out.append(self._delta(self.tool_blocks[index], json_delta))
            if choice.finish_reason:
                self.stop_reason = FINISH_TO_STOP.get(choice.finish_reason, "end_turn")
        if chunk.usage is not None:
            self.usage = Usage.of(from_chat(chunk.usage))
        return b"".join(out)

    def fail(self, error: MegagateError) -> bytes | None:
        return None  # Anthropic's generic `error` event says it

    def finish(self) -> bytes:
        """The closing events; also what to send if the upstream ended without `[DONE]` after a finish."""
        if self.finished:
            return b""
        self.finished = True
        out: list[bytes] = []
        self._close(out)
        usage = to_message(self.usage)  # OpenAI tells usage last: message_delta carries every kind
        delta = anthropic.Delta(stop_reason=self.stop_reason)
        out.append(anthropic_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(anthropic_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _open(self, out: list[bytes], block: anthropic.ContentBlock) -> int:
        self.block += 1
        self.open = True
        event = {"type": "content_block_start", "index": self.block, "content_block": block}
        out.append(anthropic_event("content_block_start", event))
        return self.block

    def _close(self, out: list[bytes]) -> None:
        if self.open:
            out.append(anthropic_event("content_block_stop", {"type": "content_block_stop", "index": self.block}))
            self.open = False

    @staticmethod
    def _delta(index: int, delta: anthropic.Delta) -> bytes:
        return anthropic_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


class AnthropicToOpenAIStream:
    """Feed the `data` of each Anthropic event; get OpenAI chunks, then `[DONE]` after `message_stop`.

    `events(data)` gives the chunks as structs (None standing for `[DONE]`), for a translator further down the chain
    (`core.responses_stream`) to read without encoding and decoding them again; `feed(data)` encodes them. The usage
    chunk is always among the events; it is encoded only when the client asked for it (`include_usage`)."""

    def __init__(self, model: str, created: int, *, include_usage: bool = False) -> None:
        self.id = "chatcmpl-megagate"
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.tool_calls: dict[int, int] = {}  # content block index -> OpenAI tool-call index
        self.thinking = ThinkingInStream()
        self.usage = Usage()
        self.finished = False

    def _chunk(self, delta: Delta, finish: str | None = None, usage: ChatUsage | None = None) -> ChatCompletionChunk:
        choices = [] if usage is not None else [ChunkChoice(0, delta, finish)]
        return ChatCompletionChunk(self.id, self.created, self.model, choices, usage)

    def feed(self, data: bytes) -> bytes:
        return b"".join(
            DONE if chunk is None else b"data: " + _encoder.encode(chunk) + b"\n\n"
            for chunk in self.events(data)
            if chunk is None or chunk.usage is None or self.include_usage
        )

    def events(self, data: bytes) -> list[ChatCompletionChunk | None]:
        event = anthropic.event_decoder.decode(data)
        kind = event.type
        if kind == "message_start" and event.message is not None:
            self.id, self.model = event.message.id, event.message.model or self.model
            self.usage = self.usage.merged(from_message(event.message.usage))
            return [self._chunk(Delta(role="assistant", content=""))]
        if kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use":
                call_index = self.tool_calls[event.index or 0] = len(self.tool_calls)
                call = ToolCall(id=block.id, type="function", function=FunctionCall(block.name, ""), index=call_index)
                return [self._chunk(Delta(tool_calls=[call]))]
            if block.type == "text" and block.text:
                return [self._chunk(Delta(content=block.text))]
            if (whole := self.thinking.start(event.index or 0, block)) is not None:
                return [self._chunk(Delta(reasoning_details=[whole]))]
            return []
        if kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                return [self._chunk(Delta(content=delta.text))]
            if delta.type == "input_json_delta" and delta.partial_json and (event.index or 0) in self.tool_calls:
                call = ToolCall(
                    function=FunctionCall(arguments=delta.partial_json), index=self.tool_calls[event.index or 0]
                )
                return [self._chunk(Delta(tool_calls=[call]))]
            if (thought := self.thinking.delta(event.index or 0, delta)) is not None:
                return [self._chunk(Delta(reasoning_content=thought))]
            return []  # a signature delta waits for its block's end
        if kind == "content_block_stop" and (signed := self.thinking.stop(event.index or 0)) is not None:
            return [self._chunk(Delta(reasoning_details=[signed]))]  # the whole block, signed, to send back
        if kind == "message_delta":
            if event.usage is not None:  # a later count wins, kind by kind: message_start's input stays
                self.usage = self.usage.merged(from_message(event.usage))
            reason = event.delta.stop_reason if event.delta is not None else None
            return [self._chunk(Delta(), STOP_TO_FINISH.get(reason or "end_turn", "stop"))]
        if kind == "message_stop":
            return self._finish()
        return []  # ping, and events this translator does not know

    def fail(self, error: MegagateError) -> bytes | None:
        return None  # OpenAI's generic error chunk and `[DONE]` say it

    def _finish(self) -> list[ChatCompletionChunk | None]:
        if self.finished:
            return []
        self.finished = True
        return [self._chunk(Delta(), usage=to_chat(self.usage)), None]
