"""Anthropic Messages request -> OpenAI chat completion request.

Every block type a client can send is either translated or refused with a 400
naming where it was; nothing is silently dropped except `thinking` blocks and
the `thinking` option, which models here cannot use.
"""

from __future__ import annotations

import json
from typing import Any

from neuron.errors import bad_request
from neuron.fields import opt_float, opt_int, require_object


def to_openai(body: Any) -> dict:
    data = require_object(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required", param="model", code="missing_field")
    max_tokens = opt_int(data, "max_tokens", minimum=1)
    if max_tokens is None:
        raise bad_request("max_tokens: required, an integer >= 1", param="max_tokens", code="missing_field")
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                           "messages": system_messages(data.get("system")) + convert_messages(data.get("messages"))}
    for key in ("temperature", "top_p"):
        if (value := opt_float(data, key, minimum=0)) is not None:
            out[key] = value
    if (top_k := opt_int(data, "top_k", minimum=0)) is not None:
        out["top_k"] = top_k
    if (stops := data.get("stop_sequences")) is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop_sequences: expected a list of strings", param="stop_sequences")
        out["stop"] = stops
    if isinstance(data.get("metadata"), dict) and isinstance(data["metadata"].get("user_id"), str):
        out["user"] = data["metadata"]["user_id"]
    if data.get("tools") is not None:
        out["tools"] = convert_tools(data["tools"])
    if data.get("tool_choice") is not None:
        out.update(convert_tool_choice(data["tool_choice"]))
    if data.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if isinstance(data.get("cortex_script"), str):
        out["cortex_script"] = data["cortex_script"]  # test-only, honoured by tiny models alone
    last = out["messages"][-1]
    if last["role"] == "assistant" and isinstance(last.get("content"), str) and last["content"] \
            and not last.get("tool_calls"):
        out["continue_final_message"] = True  # a prefill: the answer continues it, as Anthropic's API does
    return out


def system_messages(system: Any, where: str = "system") -> list[dict]:
    """`system` (or a system message's content) as OpenAI system messages: a string or text blocks."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        return [{"role": "system", "content": "\n".join(_text_of(b, f"{where}[{i}]") for i, b in enumerate(system))}]
    raise bad_request(f"{where}: expected a string or a list of text blocks", param="system")


def _text_of(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise bad_request(f"{where}: expected a text block", param="system")
    return block["text"]


def convert_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list", param="messages")
    out: list[dict] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            raise bad_request(f"{where}.role: expected \"user\", \"assistant\" or \"system\"", param="messages")
        content = msg.get("content")
        if msg["role"] == "system":
            # A system message inside the conversation (Claude Code sends them): kept where it was sent.
            out.extend(system_messages(content, f"{where}.content"))
            continue
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            out.extend(_assistant(content, where) if msg["role"] == "assistant" else _user(content, where))
        else:
            raise bad_request(f"{where}.content: expected a string or a list of content blocks", param="messages")
    return out


def _assistant(blocks: list, where: str) -> list[dict]:
    texts, calls = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                raise bad_request(f"{where}.content[{j}]: tool_use needs a name and an input object",
                                  param="messages")
            calls.append({"id": block.get("id") or f"toolu_{j}", "type": "function", "function": {
                "name": block["name"], "arguments": json.dumps(block.get("input", {}), ensure_ascii=False)}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: nothing to send back to a model that cannot think
        else:
            raise bad_request(f"{where}.content[{j}]: block type {kind!r} is not allowed in an assistant turn",
                              param="messages")
    msg: dict = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def _user(blocks: list, where: str) -> list[dict]:
    """Tool results become `tool` messages, in order; the rest of the turn follows as one user message."""
    tool_msgs, parts = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, f"{where}.content[{j}]")}})
        elif kind == "tool_result":
            tool_msgs.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                              "content": _tool_result_text(block, f"{where}.content[{j}]")})
        else:
            raise bad_request(f"{where}.content[{j}]: block type {kind!r} is not supported", param="messages")
    out = list(tool_msgs)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _image_url(block: dict, where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise bad_request(f"{where}.source: expected a base64 or url image source", param="messages")


def _tool_result_text(block: dict, where: str) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(f"{where}.content[{k}]: only text is supported inside tool_result",
                                  param="messages")
            texts.append(part.get("text", ""))
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content: expected a string or text blocks", param="messages")
    return f"Error: {content}" if block.get("is_error") else content


def convert_tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("tools: expected a list", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise bad_request(f"tools[{i}].name: required", param="tools")
        if tool.get("type") not in (None, "custom"):
            raise bad_request(f"tools[{i}]: server tool {tool['type']!r} is not available here; "
                              "only client tools (name, description, input_schema) are", param="tools")
        out.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description", ""),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}})
    return out


def convert_tool_choice(choice: Any) -> dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise bad_request("tool_choice: expected {type: auto | any | none | tool, name?}", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out
