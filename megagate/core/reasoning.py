"""Reasoning across formats: Anthropic `thinking` blocks ⇄ OpenAI chat `reasoning_content` + `reasoning_details`.

An Anthropic answer's thinking reaches an OpenAI-format client as `reasoning_content` (the text, as DeepSeek and
vLLM name it, which OpenCode and Cline show) and `reasoning_details` (OpenRouter's documented field: each block's
text and signature as `reasoning.text`, a `redacted_thinking` block's opaque data as `reasoning.encrypted`, with
`format: "anthropic-claude-v1"`). The client sends them back on its next assistant turn; they become the thinking
blocks again, byte for byte, before the turn's `tool_use`, which a thinking tool loop requires. LiteLLM's
`thinking_blocks` are read too. Reasoning without a signature is never forged into a signed block: it is left
out (the upstream would refuse a block it did not sign), so a thinking tool loop needs a client that returns
`reasoning_details`.
"""

from __future__ import annotations

from typing import Any

from megagate.core import anthropic
from megagate.core.schemas import ReasoningDetail

FORMAT = "anthropic-claude-v1"
Json = dict[str, Any]


def details_of(blocks: list[anthropic.ContentBlock]) -> list[ReasoningDetail]:
    """The signed reasoning of an Anthropic answer, in the order it came."""
    details = []
    for index, block in enumerate(b for b in blocks if b.type in ("thinking", "redacted_thinking")):
        if block.type == "thinking":
            details.append(ReasoningDetail("reasoning.text", text=block.thinking or "", signature=block.signature,
                                           format=FORMAT, index=index))  # fmt: skip
        else:
            details.append(ReasoningDetail("reasoning.encrypted", data=block.data, format=FORMAT, index=index))
    return details


def text_of(blocks: list[anthropic.ContentBlock]) -> str:
    return "".join(b.thinking or "" for b in blocks if b.type == "thinking")


def thinking_blocks(message: Json) -> list[Json]:
    """The Anthropic thinking blocks an OpenAI assistant message carries back (signed ones only, as given)."""
    blocks: list[Json] = []
    for detail in message.get("reasoning_details") or []:
        if not isinstance(detail, dict) or detail.get("format", FORMAT) != FORMAT:
            continue  # another provider's reasoning: not Anthropic's to verify
        if detail.get("type") == "reasoning.text" and detail.get("signature"):
            blocks.append({"type": "thinking", "thinking": detail.get("text") or "", "signature": detail["signature"]})
        elif detail.get("type") == "reasoning.encrypted" and detail.get("data"):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
    if blocks:
        return blocks
    for block in message.get("thinking_blocks") or []:  # LiteLLM's form: the Anthropic blocks themselves
        if isinstance(block, dict) and block.get("type") == "thinking" and block.get("signature"):
            blocks.append(
                {"type": "thinking", "thinking": block.get("thinking") or "", "signature": block["signature"]}
            )
        elif isinstance(block, dict) and block.get("type") == "redacted_thinking" and block.get("data"):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
    return blocks


class ThinkingInStream:
    """The thinking blocks of an Anthropic stream, followed by index: their text goes out as it comes
    (`reasoning_content` deltas), their signed form once each is complete (a `reasoning_details` delta)."""

    def __init__(self) -> None:
        self.open: dict[int, ReasoningDetail] = {}
        self.count = 0

    def start(self, index: int, block: anthropic.ContentBlock) -> ReasoningDetail | None:
        """A block begins; a redacted one is complete at once (its data comes whole)."""
        if block.type == "redacted_thinking":
            self.count += 1
            return ReasoningDetail("reasoning.encrypted", data=block.data, format=FORMAT, index=self.count - 1)
        if block.type == "thinking":
            self.open[index] = ReasoningDetail("reasoning.text", text=block.thinking or "", signature=block.signature,
                                               format=FORMAT, index=self.count)  # fmt: skip
            self.count += 1
        return None

    def delta(self, index: int, delta: anthropic.Delta) -> str | None:
        """The reasoning text a delta adds (to send now), or None; a signature is kept for the block's end."""
        detail = self.open.get(index)
        if detail is None:
            return None
        if delta.type == "thinking_delta" and delta.thinking:
            detail.text = (detail.text or "") + delta.thinking
            return delta.thinking
        if delta.type == "signature_delta" and delta.signature:
            detail.signature = (detail.signature or "") + delta.signature
        return None

    def stop(self, index: int) -> ReasoningDetail | None:
        return self.open.pop(index, None)
