"""Anthropic Messages request -> OpenAI chat completion request.

Every block type a client can send is either translated or refused with a 400
naming where it was, worded as Anthropic words it (clients key their fallbacks
on the wording); every top-level field follows `fields.MESSAGES`. `thinking`
blocks are dropped: models here cannot use an earlier turn's reasoning.
"""

from __future__ import annotations

import json
from typing import Any

from cortex_gateway.anthropic.errors import ANTHROPIC_DETAILS
from cortex_gateway.anthropic.fields import MESSAGES
from neuron.shared.errors import ApiError, bad_request
from neuron.shared.field_policy import FieldPolicy
from neuron.shared.fields import opt_float, opt_int, require_object

# Claude Code's first system block is billing metadata for Anthropic's service, and it changes every session
# (`x-anthropic-billing-header: cc_version=2.1.197.<hash>; ...`): kept, it would open every prompt with
# different text and defeat prefix reuse across sessions (a 70k-token prompt re-read each time).
BILLING_HEADER = "x-anthropic-billing-header:"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # what Anthropic's API takes
BLOCK_TAGS = "'text', 'image', 'document', 'tool_use', 'tool_result', 'thinking', 'redacted_thinking'"


def to_openai(body: Any, policy: FieldPolicy = MESSAGES) -> dict:
    data = require_object(body)
    refuse_thread(data)
    policy.check(data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: Field required", param="model", code="missing_field")
    max_tokens = opt_int(data, "max_tokens", minimum=1)
    if max_tokens is None:
        raise bad_request("max_tokens: Field required (an integer >= 1)", param="max_tokens", code="missing_field")
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                           "messages": system_messages(data.get("system")) + convert_messages(data.get("messages"))}
    for key in ("temperature", "top_p"):
        if (value := _unit_interval(data, key)) is not None:
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
    if (fmt := output_format(data.get("output_config"))) is not None:
        out["response_format"] = fmt
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


def refuse_thread(data: dict) -> None:
    """Threads keep the conversation on Anthropic's side; the SDK's threaded tool runner then sends only the new
    turn. Refused with the error the SDK recognises, on which it resends the whole conversation unthreaded."""
    if data.get("thread") is None:
        return
    raise ApiError(400, "invalid_request_error", "thread: threads are not supported here: the gateway keeps no "
                   "conversation state for the Messages API. Send the full conversation without `thread`.",
                   param="thread", code="thread_unsupported_request",
                   details={ANTHROPIC_DETAILS: {"error_code": "thread_unsupported_request", "unsupported": []}})


def _unit_interval(data: dict, key: str) -> float | None:
    """temperature and top_p: Anthropic takes 0 to 1 and refuses more, in pydantic's words."""
    value = opt_float(data, key, minimum=0)
    if value is not None and value > 1:
        raise bad_request(f"{key}: Input should be less than or equal to 1", param=key)
    return value


def output_format(config: Any) -> dict | None:
    """`output_config.format` ({type: json_schema, schema}) as OpenAI's response_format; `effort` is ignored."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise bad_request("output_config: Input should be a valid dictionary", param="output_config")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise bad_request("output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
                          param="output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def system_messages(system: Any, where: str = "system") -> list[dict]:
    """`system` (or a system message's content) as OpenAI system messages: a string or text blocks."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = [_text_of(b, f"{where}.{i}") for i, b in enumerate(system)]
        kept = [t for t in texts if not t.startswith(BILLING_HEADER)]
        return [{"role": "system", "content": "\n".join(kept)}] if kept else []
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
        where = f"messages.{i}"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            raise bad_request(f"{where}.role: Input should be 'user', 'assistant' or 'system'", param="messages")
        content = msg.get("content")
        if msg["role"] == "system":
            # A system message inside the conversation (Claude Code sends them): kept where it was sent.
            out.extend(system_messages(content, f"{where}.content"))
            continue
        if (content == "" or content == []) and not (msg["role"] == "assistant" and i == len(messages) - 1):
            raise bad_request(f"{where}: all messages must have non-empty content except for the optional final "
                              "assistant message", param="messages")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            out.extend(_assistant(content, where) if msg["role"] == "assistant" else _user(content, where))
        else:
            raise bad_request(f"{where}.content: Input should be a valid string or a list of content blocks",
                          param="messages")
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
        elif kind == "image":
            raise bad_request(f"{where}.content.{j}: image blocks are read in user turns only", param="messages",
                              code="unsupported_content")
        else:
            raise _bad_block(kind, f"{where}.content.{j}")
    msg: dict = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def _user(blocks: list, where: str) -> list[dict]:
    """Tool results become `tool` messages, in order; the rest of the turn follows as one user message, with
    the images of the tool results (a chat tool message carries text only: a screenshot a tool returned is
    shown to the model in the user turn that follows its result)."""
    tool_msgs, parts = [], []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "tool_result":
            text, images = _tool_result(block, f"{where}.content.{j}")
            tool_msgs.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            parts.extend(images)
        elif kind == "image":
            parts.append(image_part(block, f"{where}.content.{j}"))
        elif kind == "document":
            raise bad_request(f"{where}.content.{j}: document blocks are not supported: the models here read text "
                              "and images only. Send the document's content as text.", param="messages",
                              code="unsupported_content")
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad_block(kind, f"{where}.content.{j}")
    out = list(tool_msgs)
    if any(p["type"] == "image_url" for p in parts):  # OpenAI content parts, the images where they were
        out.append({"role": "user", "content": parts})
    elif parts:
        out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
    return out


def image_part(block: dict, where: str) -> dict:
    """An image block as an OpenAI image_url part: a base64 source as a data URL, a url source as its URL (which
    the gateway fetches only where allowed, `cortex_gateway.chat_images`, naming the block as `where`)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if media not in IMAGE_TYPES or not isinstance(data, str):
            raise bad_request(f"{where}.source: a base64 source needs media_type (one of {', '.join(IMAGE_TYPES)}) "
                              "and data (a base64 string)", param="messages", code="invalid_image")
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif kind == "file":
        raise bad_request(f"{where}.source: file sources are not supported: the gateway stores no files. Send the "
                          "image as a base64 source", param="messages", code="unsupported_content")
    else:
        raise bad_request(f"{where}.source: expected a base64 source ({{type: base64, media_type, data}}) or a url "
                          "source ({type: url, url})", param="messages", code="invalid_image")
    return {"type": "image_url", "image_url": {"url": url}, "cortex_where": f"{where}.source"}


def _bad_block(kind: Any, where: str):
    """Anthropic's own wording for a block it does not know; a clearer word for server-tool blocks, which a
    conversation begun on Anthropic's service carries."""
    if isinstance(kind, str) and (kind.startswith(("server_tool", "mcp_tool", "container")) or kind.endswith(
            ("_tool_result", "search_result"))):
        return bad_request(f"{where}: {kind} blocks come from tools that run on Anthropic's service, and they do not "
                           "run here: drop these blocks, or pass what they found as text", param="messages",
                           code="unsupported_content")
    return bad_request(f"{where}: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
                       f"{BLOCK_TAGS}", param="messages", code="unknown_block_type")


def _tool_result(block: dict, where: str) -> tuple[str, list[dict]]:
    """A tool result's text, and its images as image_url parts."""
    content, images = block.get("content", ""), []
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind == "image":
                images.append(image_part(part, f"{where}.content.{k}"))
                continue
            if kind != "text":
                raise bad_request(f"{where}.content.{k}: {kind} blocks inside tool_result are not supported: the "
                                  "models here read text and images only", param="messages",
                                  code="unsupported_content")
            texts.append(part.get("text", ""))
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content: expected a string or text and image blocks", param="messages")
    return (f"Error: {content}" if block.get("is_error") else content), images


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
