"""Responses input items: checked into one canonical form, and turned into chat messages.

`normalize_input` accepts what a client may send as `input` (a string, or a list of
messages, `function_call` and `function_call_output` items), refuses what these
models cannot read with a 400 naming the item and its type, and gives every item an
id, as OpenAI does. The canonical items are what the store keeps and what
`GET /v1/responses/{id}/input_items` lists; output items have the same shapes, so
one `to_messages` turns a whole stored conversation into the neurons' chat messages.
"""

from __future__ import annotations

import uuid
from typing import Any

from cortex_gateway.chat_images import WHERE_KEY
from neuron.shared.errors import bad_request

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
UNREADABLE_PARTS = ("input_image", "input_file", "input_audio")
SUPPORTED_ITEMS = "messages, function_call and function_call_output items"
NAMESPACE_JOIN = "__"  # <namespace>__<name>: `tools` offers a namespace's function so (chat APIs allow _ in names)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def normalize_input(value: Any) -> list[dict]:
    """The request's `input` as canonical items (reasoning items dropped: see `_item`)."""
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, "input")]
    if not isinstance(value, list):
        raise bad_request("input: expected a string or a list of items", param="input")
    items = [_item(item, f"input[{i}]") for i, item in enumerate(value)]
    return [item for item in items if item is not None]


def _item(item: Any, where: str) -> dict | None:
    if not isinstance(item, dict):
        raise bad_request(f"{where}: expected an object (a message or an item)", param="input")
    kind = item.get("type")
    if kind == "message" or (kind is None and "role" in item):
        return _message(item, where)
    if kind == "function_call":
        return _function_call(item, where)
    if kind == "function_call_output":
        return _function_call_output(item, where)
    if kind == "reasoning":
        return None  # a reasoning model's earlier thoughts: these models neither read nor make them
    if kind == "item_reference":
        raise bad_request(f"{where}: item references are not supported; send the item itself, or continue "
                          "the conversation with previous_response_id", param="input", code="unsupported_item")
    if kind is None:
        raise bad_request(f"{where}.type: required (or a role, for a message)", param="input")
    raise bad_request(f"{where}: item type {kind!r} is not supported here; only {SUPPORTED_ITEMS} are "
                      "(tools other than functions are not available)", param="input", code="unsupported_item")


def _message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in ROLES:
        raise bad_request(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}", param="input")
    content = item.get("content")
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = [_part(part, f"{where}.content[{j}]", role) for j, part in enumerate(content)]
    else:
        raise bad_request(f"{where}.content: expected a string or a list of content parts", param="input")
    out = {"id": _given_id(item) or new_id("msg"), "type": "message", "role": role, "status": "completed"}
    if role == "assistant":
        out["content"] = [{"type": "output_text", "text": t, "annotations": []} for t in texts]
    else:
        out["content"] = [t if isinstance(t, dict) else {"type": "input_text", "text": t} for t in texts]
    return out


def _part(part: Any, where: str, role: str) -> str | dict:
    """A text part's text, or (in a user message) a canonical input_image part."""
    if role == "user" and isinstance(part, dict) and part.get("type") == "input_image":
        return _image(part, where)
    return _text_part(part, where)


def _image(part: dict, where: str) -> dict:
    """`input_image` with an `image_url` (a data URL, or an http(s) URL the gateway fetches where allowed);
    a `file_id` is refused, as the gateway keeps no files."""
    if part.get("file_id") is not None and part.get("image_url") is None:
        raise bad_request(f"{where}.file_id: images by file_id are not supported: the gateway stores no files. "
                          "Send image_url as a data URL (data:image/png;base64,...)", param="input",
                          code="unsupported_content")
    if not isinstance(part.get("image_url"), str) or not part["image_url"]:
        raise bad_request(f"{where}.image_url: required, a data URL (data:image/png;base64,...)", param="input")
    detail = part.get("detail", "auto")
    if detail not in ("auto", "low", "high"):
        raise bad_request(f"{where}.detail: expected 'auto', 'low' or 'high', got {detail!r}", param="input")
    return {"type": "input_image", "image_url": part["image_url"], "detail": detail}


def _text_part(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS and isinstance(part.get("text"), str):
        return part["text"]
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]  # an earlier answer's refusal: what the model said, as text
    if kind in TEXT_PARTS:
        raise bad_request(f"{where}.text: expected a string", param="input")
    if kind in UNREADABLE_PARTS:
        raise bad_request(f"{where}: part type {kind!r} is not supported: these models read text only; "
                          "send input_text parts", param="input", code="unsupported_content")
    raise bad_request(f"{where}: expected a content part (input_text or output_text), got "
                      f"{kind if kind else type(part).__name__!r}", param="input")


def _function_call(item: dict, where: str) -> dict:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise bad_request(f"{where}.{key}: required, a string", param="input")
    out = {"id": _given_id(item) or new_id("fc"), "type": "function_call", "call_id": item["call_id"],
           "name": item["name"], "arguments": item["arguments"], "status": "completed"}
    namespace = item.get("namespace")
    if namespace is not None:  # a call of a namespace tool's function, as OpenAI returned it (and Codex resends it)
        if not isinstance(namespace, str) or not namespace:
            raise bad_request(f"{where}.namespace: expected the namespace's name", param="input")
        out["namespace"] = namespace
    return out


def _function_call_output(item: dict, where: str) -> dict:
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise bad_request(f"{where}.call_id: required, the call_id of the function_call it answers",
                          param="input")
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(_output_part(part, f"{where}.output[{j}]") for j, part in enumerate(output))
    if not isinstance(output, str):
        raise bad_request(f"{where}.output: expected a string or a list of input_text parts", param="input")
    return {"id": _given_id(item) or new_id("fco"), "type": "function_call_output", "call_id": item["call_id"],
            "output": output, "status": "completed"}


def _output_part(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "input_text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind in UNREADABLE_PARTS:
        raise bad_request(f"{where}: part type {kind!r} is not supported: these models read text only",
                          param="input", code="unsupported_content")
    raise bad_request(f"{where}: expected an input_text part", param="input")


def _given_id(item: dict) -> str | None:
    value = item.get("id")
    return value if isinstance(value, str) and value else None


def to_messages(items: list[dict]) -> list[dict]:
    """Canonical items (input or output) as chat messages.

    A function_call joins the assistant message just before it, so a turn the model answered with
    text and calls, or with parallel calls, is one assistant message again, as the model made it."""
    out: list[dict] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            out.append({"role": item["role"], "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": _model_name(item), "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return out


def _chat_content(parts: list[dict]) -> str | list[dict]:
    """A message's parts as chat content: its text, or OpenAI parts where it has images."""
    if not any(p["type"] == "input_image" for p in parts):
        return "".join(part.get("text", "") for part in parts)
    return [{"type": "image_url", "image_url": {"url": p["image_url"], "detail": p.get("detail", "auto")}}
            if p["type"] == "input_image" else {"type": "text", "text": p.get("text", "")} for p in parts]


def name_images(value: Any, messages: list[dict]) -> None:
    """Name the input's own image parts as the client sent them (`input[1].content[0]`) for the gateway's image
    checks (`chat_images`); a stored conversation's, before them, keep their chat names."""
    items = value if isinstance(value, list) else []
    names = [f"input[{i}].content[{j}].image_url" for i, item in enumerate(items)
             if isinstance(item, dict) and isinstance(item.get("content"), list)
             for j, part in enumerate(item["content"]) if isinstance(part, dict) and part.get("type") == "input_image"]
    parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]
             if p.get("type") == "image_url"]
    for name, part in zip(names, parts[len(parts) - len(names):], strict=True):
        part[WHERE_KEY] = name


def flat_name(namespace: str, name: str) -> str:
    """The name the model knows a namespace's function by (see `tools`)."""
    return f"{namespace}{NAMESPACE_JOIN}{name}"


def _model_name(call: dict) -> str:
    namespace = call.get("namespace")
    return flat_name(namespace, call["name"]) if namespace else call["name"]
