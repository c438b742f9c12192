"""OpenAI Responses API ⇄ chat completions: requests and whole answers, as pure functions on decoded JSON.

MegaLLM speaks chat completions (and Anthropic's messages); Codex CLI and `client.responses.*` speak only the
Responses API. A Responses request becomes a chat request (and, for an Anthropic-only upstream, goes on through
`core.translate`); the chat answer becomes a Response. Streams are translated by `core.responses_stream`.

What maps: `instructions` and `system` / `developer` messages → system messages; `user` / `assistant` messages with
`input_text`, `input_image`, `output_text` parts; `function_call` / `function_call_output` and `custom_tool_call` /
`custom_tool_call_output` items → assistant tool calls and tool messages (call ids kept); tools: `function` as is,
`namespace` tools flattened to `<namespace>__<name>` and mapped back, `custom` (freeform, Codex's `apply_patch`)
as a function with one string argument `input` and mapped back to `custom_tool_call`; `tool_choice`,
`parallel_tool_calls`, `reasoning.effort` → `reasoning_effort`, `max_output_tokens` → `max_tokens`, `text.format`
→ `response_format`, `temperature`, `top_p`, `user`, `prompt_cache_key`. Dropped: `reasoning` items (no chat
counterpart), records of hosted tool calls, hosted tools the upstream cannot run (`web_search`, ... : named in
`ChatPlan.dropped_tools`), `store`, `include`, `metadata`, `text.verbosity`. Unknown item or part types are a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from megagate.core.errors import InvalidRequest
from megagate.core.schemas import ChatCompletion
from megagate.core.translate import UntranslatableRequest
from megagate.core.usage import Usage, from_chat, to_response

Json = dict[str, Any]
NAMESPACE_SEPARATOR = "__"
_INVALID_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Records of hosted tool calls in a conversation's history: the other side never ran them, nothing to replay.
HOSTED_CALL_ITEMS = frozenset({"web_search_call", "file_search_call", "code_interpreter_call",
                               "image_generation_call", "computer_call", "computer_call_output", "tool_search_call",
                               "tool_search_output", "mcp_call", "mcp_list_tools", "local_shell_call",
                               "local_shell_call_output"})  # fmt: skip
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ToolName:
    """What a chat function name stands for on the Responses side."""

    name: str
    kind: str = "function"  # or "custom"
    namespace: str | None = None


@dataclass(slots=True)
class ChatPlan:
    """A translated request: the chat body, how to map tool names back, and the hosted tools left out."""

    body: Json
    tools: dict[str, ToolName] = field(default_factory=dict)
    dropped_tools: list[str] = field(default_factory=list)


def _chat_name(name: str, namespace: str | None = None) -> str:
    full = f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name
    return _INVALID_NAME.sub("_", full)[:64]


def _tools(tools: list[Json], plan: ChatPlan) -> list[Json]:
    out: list[Json] = []
    for index, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            out.append(_function(tool, None, plan))
        elif kind == "namespace":
            out += [_function(t, str(tool.get("name", "")), plan) for t in tool.get("tools") or []
                    if t.get("type", "function") == "function"]  # fmt: skip
        elif kind == "custom":
            name = str(tool.get("name", ""))
            chat = _chat_name(name)
            plan.tools[chat] = ToolName(name, "custom")
            description = str(tool.get("description") or "")
            grammar = (tool.get("format") or {}).get("definition")
            if grammar:
                description += f"\n\nThe `input` argument must follow this grammar:\n{grammar}"
            parameters = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}
            out.append({"type": "function", "function": {"name": chat, "description": description,
                                                         "parameters": parameters}})  # fmt: skip
        elif isinstance(kind, str):
            plan.dropped_tools.append(kind)  # hosted: web_search, file_search, tool_search, image_generation...
        else:
            raise UntranslatableRequest(f"tools[{index}].type", repr(kind), "chat completions")
    return out


def _function(tool: Json, namespace: str | None, plan: ChatPlan) -> Json:
    name = str(tool.get("name", ""))
    chat = _chat_name(name, namespace)
    plan.tools[chat] = ToolName(name, "function", namespace)
    function: Json = {"name": chat, "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _parts(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    parts: list[Json] = []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "refusal"):
            parts.append({"type": "text", "text": part.get("text") or part.get("refusal") or ""})
        elif kind == "input_image":
            url = part.get("image_url") or ""
            if not url:
                raise UntranslatableRequest(f"{where}.content[{index}]", "an image by file_id", "chat completions")
            image: Json = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise UntranslatableRequest(f"{where}.content[{index}].type", repr(kind), "chat completions")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p.get("text", "") for p in output if isinstance(p, dict))
    return _encoder.encode(output).decode()


def _assistant(messages: list[Json]) -> Json:
    """The assistant message tool calls attach to: the last one if it is an assistant's, else a new one."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    messages.append({"role": "assistant", "content": None})
    return messages[-1]


def _messages(items: list[Json]) -> list[Json]:
    messages: list[Json] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise UntranslatableRequest(f"{where}.role", repr(role), "chat completions")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _parts(item.get("content"), where)})  # fmt: skip
        elif kind in ("function_call", "custom_tool_call"):
            custom = kind == "custom_tool_call"
            name = _chat_name(str(item.get("name", "")), None if custom else item.get("namespace"))
            arguments = _encoder.encode({"input": item.get("input", "")}).decode() if custom else item.get("arguments")
            call = {"id": item.get("call_id"), "type": "function", "function": {"name": name, "arguments": arguments}}
            _assistant(messages).setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = _output_text(item.get("output"))
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind == "reasoning" or kind in HOSTED_CALL_ITEMS:
            continue  # no chat counterpart; nothing the upstream could use
        else:
            raise UntranslatableRequest(f"{where}.type", repr(kind), "chat completions")
    return messages


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and choice.get("name"):
        return {"type": "function", "function": {"name": _chat_name(str(choice["name"]))}}
    return None


def responses_to_chat_request(body: Json) -> ChatPlan:
    """A Responses request as a chat completions request. Raises InvalidRequest for what needs a stored
    conversation or cannot be expressed."""
    if body.get("previous_response_id"):
        raise InvalidRequest(
            "megagate keeps no conversation store, and the upstream serving this model does not speak the "
            "Responses API: send the whole conversation in `input` (with `store: false`) instead of "
            "`previous_response_id`.",
            param="previous_response_id",
        )
    plan = ChatPlan({"model": body.get("model")})
    tools = _tools(body.get("tools") or [], plan)
    messages: list[Json] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": _output_text(body["instructions"])})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages += _messages(given)
    if not messages:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    chat = plan.body
    chat["messages"] = messages
    if tools:
        chat["tools"] = tools
        if (choice := _tool_choice(body.get("tool_choice"))) is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    for name in ("temperature", "top_p", "prompt_cache_key"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if (user := body.get("user") or body.get("safety_identifier")) is not None:
        chat["user"] = user
    if isinstance(reasoning := body.get("reasoning"), dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    if (response_format := _response_format(body.get("text"))) is not None:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # Codex sums the turn's usage: it must be real
    return plan


def _response_format(text: Any) -> Json | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


# --- answers --------------------------------------------------------------------------------------------------

_completion_decoder = msgspec.json.Decoder(ChatCompletion)


def responses_usage(usage: Usage | None) -> Json:
    return to_response(usage or Usage())


def message_item(item_id: str, text: str, status: str = "completed") -> Json:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def tool_item(item_id: str, call_id: str, chat_name: str, arguments: str, tools: dict[str, ToolName]) -> Json:
    """A chat tool call as a Responses output item: a function_call, or the custom_tool_call it stands for."""
    known = tools.get(chat_name, ToolName(chat_name))
    if known.kind == "custom":
        return {"id": item_id, "type": "custom_tool_call", "call_id": call_id, "name": known.name,
                "input": custom_input(arguments), "status": "completed"}  # fmt: skip
    item: Json = {"id": item_id, "type": "function_call", "call_id": call_id, "name": known.name,
                  "arguments": arguments, "status": "completed"}  # fmt: skip
    if known.namespace:
        item["namespace"] = known.namespace
    return item


def custom_input(arguments: str) -> str:
    """The freeform input a custom tool's one `input` argument carries (the raw arguments if the model did not
    follow the schema)."""
    try:
        decoded = msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return arguments
    return decoded["input"] if isinstance(decoded, dict) and isinstance(decoded.get("input"), str) else arguments


def response_object(
    response_id: str, model: str, created: int, output: list[Json], status: str, usage: Json | None
) -> Json:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": status,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
    }


def chat_to_responses_answer(body: bytes, tools: dict[str, ToolName], created: int) -> bytes:
    """A chat completion as a Response."""
    completion = _completion_decoder.decode(body)
    choice = completion.choices[0] if completion.choices else None
    output: list[Json] = []
    if choice is not None and choice.message.content:
        output.append(message_item(f"msg_{completion.id}", choice.message.content))
    for index, call in enumerate((choice.message.tool_calls if choice else None) or []):
        function = call.function
        name, arguments = (function.name or "", function.arguments or "") if function else ("", "")
        output.append(tool_item(f"fc_{completion.id}_{index}", call.id or f"call_{index}", name, arguments, tools))
    status = "incomplete" if choice is not None and choice.finish_reason == "length" else "completed"
    usage = Usage.of(from_chat(completion.usage)) if completion.usage else None
    answer = response_object(f"resp_{completion.id}", completion.model, created, output, status, responses_usage(usage))
    return _encoder.encode(answer)
