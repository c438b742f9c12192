"""OpenAI chat ⇄ Anthropic Messages: requests and whole responses, as pure functions on decoded JSON.

Used when the upstream chosen for a model speaks only the other format, so that each client always gets its own
format back. What maps: system prompt, multi-turn text, images (data URLs ⇄ base64 sources, URLs ⇄ url sources),
tools and tool choice, tool calls ⇄ tool_use blocks, tool results, stop sequences, sampling parameters, stop
reasons and usage. Roles: OpenAI `system` / `developer` messages join Anthropic's top-level `system` in order,
wherever they stand (Anthropic's system prompt is where instructions keep their authority); an Anthropic
`system`-role message inside `messages` (Claude Code sends them) becomes an OpenAI `system` message at the same
position. Parameters with no counterpart are dropped rather than guessed (OpenAI's `n`, penalties and logprobs;
Anthropic's `top_k`), as are assistant `thinking` blocks sent to an OpenAI upstream; an Anthropic answer's thinking
reaches an OpenAI client as `reasoning_content` + signed `reasoning_details`, which come back as the same blocks
(`core.reasoning`); a role or content type that cannot be represented in the
other format is a 400 naming it (`UntranslatableRequest`), never silently lost. `cache_control` marks on OpenAI
messages, content parts and tools (where LiteLLM accepts them, as OpenCode, Cline and LangChain send them for
Claude models) land on the same Anthropic blocks: without them prompt caching is lost and the only symptom is the
bill. A mark on a whole message goes to its last block.
Streams are translated by `core.translate_stream`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from megagate.core import anthropic, reasoning
from megagate.core.errors import InvalidRequest
from megagate.core.schemas import ChatCompletion, Choice, FunctionCall, ToolCall
from megagate.core.schemas import Message as OpenAIMessage
from megagate.core.usage import Usage, from_chat, from_message, to_chat, to_message

Json = dict[str, Any]

# Anthropic requires max_tokens; an OpenAI request without one gets this (a configured default fills it first).
DEFAULT_MAX_TOKENS = 4096

STOP_TO_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "pause_turn": "stop", "refusal": "content_filter"}  # fmt: skip
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                  "content_filter": "refusal"}  # fmt: skip


# Assistant blocks with no OpenAI counterpart that lose nothing the upstream needs: reasoning the other model cannot
# verify, server-tool traffic the OpenAI side never ran.
DROPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"})


# --- requests -------------------------------------------------------------------------------------------------


class UntranslatableRequest(InvalidRequest):
    """The request uses something the upstream's format cannot express; `param` names it."""

    def __init__(self, param: str, what: str, target: str) -> None:
        super().__init__(f"Cannot translate '{param}' ({what}) to the {target} format of the upstream.", param=param)


def _text_of(content: Any) -> str:
    """The text of a string or of a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _image_to_anthropic(part: Json) -> Json:
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _image_to_openai(block: Json) -> Json:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{source.get('media_type')};base64,{source.get('data')}"},
        }
    return {"type": "image_url", "image_url": {"url": source.get("url", "")}}


def _marked(block: Json, source: Any) -> Json:
    """`block` with the `cache_control` mark of the OpenAI part or message it came from, if it has one."""
    if isinstance(source, dict) and "cache_control" in source:
        block["cache_control"] = source["cache_control"]
    return block


def _mark_last(blocks: list[Json] | str, message: Json) -> list[Json] | str:
    """A message-level `cache_control` on its last block (a string becomes one text block to carry it)."""
    if "cache_control" not in message:
        return blocks
    if isinstance(blocks, str):
        blocks = [{"type": "text", "text": blocks}]
    if blocks:
        blocks[-1]["cache_control"] = message["cache_control"]
    return blocks


def _user_blocks(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    blocks: list[Json] = []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind == "text":
            blocks.append(_marked({"type": "text", "text": part.get("text", "")}, part))
        elif kind == "image_url":
            blocks.append(_marked(_image_to_anthropic(part), part))
        else:
            raise UntranslatableRequest(f"{where}.content[{index}].type", repr(kind), "Anthropic")
    return blocks


def _text_blocks(content: Any) -> list[Json]:
    """Text parts as Anthropic text blocks, each keeping its mark (a string: one block, or none when empty)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [_marked({"type": "text", "text": p.get("text", "")}, p)
                for p in content if isinstance(p, dict) and p.get("type") == "text"]  # fmt: skip
    return []


def _has_marks(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and "cache_control" in p for p in content)


def _system(messages: list[Json]) -> str | list[Json]:
    """The system and developer messages: one string, or text blocks when a mark must be kept on one of them."""
    if not any("cache_control" in m or _has_marks(m.get("content")) for m in messages):
        return "\n\n".join(_text_of(m.get("content")) for m in messages)
    blocks: list[Json] = []
    for message in messages:
        texts = _text_blocks(message.get("content"))
        if texts and "cache_control" in message:
            texts[-1]["cache_control"] = message["cache_control"]
        blocks += texts
    return blocks


_encoder = msgspec.json.Encoder()


def _parse_arguments(arguments: str | None) -> Any:
    try:
        return msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return {"_raw_arguments": arguments}  # a model's malformed JSON is kept, not lost


def _arguments(value: Any) -> str:
    return _encoder.encode(value if value is not msgspec.UNSET else {}).decode()


def _append(messages: list[Json], role: str, blocks: list[Json] | str) -> None:
    """Anthropic wants user/assistant turns to alternate: consecutive turns of one role are merged."""
    if messages and messages[-1]["role"] == role:
        previous = messages[-1]["content"]
        if isinstance(previous, str):
            previous = [{"type": "text", "text": previous}] if previous else []
        more = [{"type": "text", "text": blocks}] if isinstance(blocks, str) else blocks
        messages[-1]["content"] = previous + more
    else:
        messages.append({"role": role, "content": blocks})


def openai_to_anthropic_request(body: Json, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> Json:
    """An OpenAI chat request as an Anthropic Messages request."""
    system: list[Json] = []
    messages: list[Json] = []
    for position, message in enumerate(body.get("messages", [])):
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(message)
        elif role == "user":
            _append(messages, "user", _mark_last(_user_blocks(content, f"messages[{position}]"), message))
        elif role == "assistant":
            text = _text_of(content)
            blocks: list[Json] = reasoning.thinking_blocks(message)  # signed thinking first, as Anthropic requires
            blocks += _text_blocks(content) if _has_marks(content) else [{"type": "text", "text": text}] if text else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = _parse_arguments(function.get("arguments"))
                blocks.append(
                    {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
                )
            _append(messages, "assistant", _mark_last(blocks, message))
        elif role in ("tool", "function"):
            result: Json = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                            "content": _text_of(content)}  # fmt: skip
            for part in content if isinstance(content, list) else []:  # one result block: any part's mark is its
                _marked(result, part)
            _append(messages, "user", [_marked(result, message)])
        else:
            raise UntranslatableRequest(f"messages[{position}].role", repr(role), "Anthropic")
    out: Json = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
    }
    if system:
        out["system"] = _system(system)
    if (temperature := body.get("temperature")) is not None:
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0..1
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    if (stop := body.get("stop")) is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if tools := body.get("tools"):
        out["tools"] = [
            _marked({
                "name": t["function"]["name"],
                **({"description": t["function"]["description"]} if t["function"].get("description") else {}),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }, t)
            for t in tools
            if t.get("type") == "function" and isinstance(t.get("function"), dict)
        ]  # fmt: skip
    choice = _tool_choice_to_anthropic(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool_choice_to_anthropic(choice: Any) -> Json | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    return None


def _tool_choice_to_openai(choice: Json) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))


def _assistant_to_openai(blocks: list[Json], where: str) -> Json:
    text, calls = [], []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            function = {"name": block.get("name"), "arguments": _arguments(block.get("input", {}))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind not in DROPPED_ASSISTANT_BLOCKS:
            raise UntranslatableRequest(f"{where}.content[{index}].type", repr(kind), "OpenAI")
    assistant: Json = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        assistant["tool_calls"] = calls
    return assistant


def _user_to_openai(blocks: list[Json], where: str) -> list[Json]:
    """Tool results become tool messages (OpenAI wants them right after the assistant's calls), the rest stays one
    user message."""
    messages: list[Json] = []
    parts: list[Json] = []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_result":
            result = {
                "role": "tool",
                "tool_call_id": block.get("tool_use_id"),
                "content": _text_of(block.get("content")),
            }
            messages.append(result)
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_to_openai(block))
        else:
            raise UntranslatableRequest(f"{where}.content[{index}].type", repr(kind), "OpenAI")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        messages.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return messages


def anthropic_to_openai_request(body: Json) -> Json:
    """An Anthropic Messages request as an OpenAI chat request."""
    messages: list[Json] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for position, message in enumerate(body.get("messages", [])):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{position}]"
        if role not in ("user", "assistant", "system"):
            raise UntranslatableRequest(f"{where}.role", repr(role), "OpenAI")
        if role == "system":  # a mid-conversation system message (Claude Code): same place, same role
            messages.append({"role": "system", "content": _text_of(content)})
        elif isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif role == "assistant":
            messages.append(_assistant_to_openai(content or [], where))
        else:
            messages.extend(_user_to_openai(content or [], where))
    out: Json = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # usage arrives last; the Anthropic stream needs it
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if tools := body.get("tools"):
        out["tools"] = [
            {"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                              "parameters": t.get("input_schema") or {"type": "object"}}}
            for t in tools
            if "input_schema" in t or t.get("type") in (None, "custom")
        ]  # fmt: skip
    if isinstance(choice := body.get("tool_choice"), dict):
        mapped = _tool_choice_to_openai(choice)
        if mapped is not None:
            out["tool_choice"] = mapped
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


# --- responses ------------------------------------------------------------------------------------------------

_completion_decoder = msgspec.json.Decoder(ChatCompletion)


def openai_to_anthropic_response(body: bytes) -> bytes:
    """An OpenAI chat completion as an Anthropic message."""
    completion = _completion_decoder.decode(body)
    choice = completion.choices[0] if completion.choices else None
    content: list[anthropic.ContentBlock] = []
    if choice is not None and choice.message.content:
        content.append(anthropic.ContentBlock(type="text", text=choice.message.content))
    for call in (choice.message.tool_calls if choice else None) or []:
        function = call.function or FunctionCall()
        content.append(
            anthropic.ContentBlock(
                type="tool_use", id=call.id, name=function.name, input=_parse_arguments(function.arguments)
            )
        )
    usage = Usage.of(from_chat(completion.usage)) if completion.usage is not None else Usage()
    message = anthropic.Message(
        id=completion.id,
        model=completion.model,
        content=content,
        stop_reason=FINISH_TO_STOP.get(choice.finish_reason or "stop", "end_turn") if choice else "end_turn",
        usage=to_message(usage),
    )
    return _encoder.encode(message)


def anthropic_to_openai_response(body: bytes, created: int) -> bytes:
    """An Anthropic message as an OpenAI chat completion (`created`: the Unix time to stamp it with)."""
    message = anthropic.message_decoder.decode(body)
    text = "".join(b.text or "" for b in message.content if b.type == "text")
    calls = [
        ToolCall(
            id=b.id,
            type="function",
            function=FunctionCall(name=b.name, arguments=_arguments(b.input)),
        )
        for b in message.content
        if b.type == "tool_use"
    ]  # fmt: skip
    usage = to_chat(Usage.of(from_message(message.usage)))
    finish = STOP_TO_FINISH.get(message.stop_reason or "end_turn", "stop")
    reply = OpenAIMessage(content=text or None, tool_calls=calls or None)
    if details := reasoning.details_of(message.content):
        reply.reasoning_content, reply.reasoning_details = reasoning.text_of(message.content), details
    return _encoder.encode(ChatCompletion(message.id, created, message.model, [Choice(0, reply, finish)], usage))
