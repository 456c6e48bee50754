"""Responses request -> chat completions request, plus the settings the Response object echoes.

The field policy (`fields.py`) has already refused what cannot be honoured and
let through what is ignored; here every honoured field is checked, with a 400
naming it, and translated into the chat-completions fields the neurons accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortex_gateway.prefix_map import HINT_FIELDS
from cortex_gateway.responses.input_items import name_images, normalize_input, to_messages
from cortex_gateway.responses.tools import Tools, parse_tools, tool_choice
from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_float, opt_int, require_type

INCLUDABLE = ("file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
              "message.input_image.image_url", "computer_call_output.output.image_url",
              "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs")
MAX_METADATA = 16


@dataclass
class Translated:
    body: dict  # the chat completions request for the neuron
    echo: dict  # the request's settings, as the Response object reports them
    input_items: list[dict]  # this request's input, canonical
    conversation: list[dict]  # the previous conversation (if any) and this input
    namespaced: dict[str, tuple[str, str]]  # a namespaced function's flat name -> (namespace, name)
    dropped: list[str]  # the hosted tools left out of what the model is offered (their types)


def previous_id(data: dict) -> str | None:
    value = data.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise bad_request("previous_response_id: expected the id of a stored response", param="previous_response_id")
    return value


def to_chat(data: dict, history: list[dict], hosted_tools: str = "drop") -> Translated:
    """Translate a request (already checked against the field policy); `history` is the previous conversation,
    `hosted_tools` the gateway's [gateway] hosted_tools (see `tools`)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required, a model id from GET /v1/models", param="model", code="missing_field")
    if "input" not in data and not history:
        raise bad_request("input: required, a string or a list of items", param="input", code="missing_field")
    items = normalize_input(data["input"]) if data.get("input") is not None else []
    conversation = history + items
    messages = _instructions(data.get("instructions")) + to_messages(conversation)
    name_images(data.get("input"), messages)
    if not messages:
        raise bad_request("input: expected a string or a non-empty list of items", param="input")
    body: dict[str, Any] = {"model": model, "messages": messages, **_sampling(data), **session_hints(data)}
    tools = parse_tools(data.get("tools"), hosted_tools)
    choice, allowed = tool_choice(data.get("tool_choice"), tools)
    if tools.functions:
        body["tools"] = [t for t in tools.functions if allowed is None or t["function"]["name"] in allowed]
    if choice is not None:
        body["tool_choice"] = choice
    if (parallel := data.get("parallel_tool_calls")) is not None:
        body["parallel_tool_calls"] = require_type(parallel, bool, "parallel_tool_calls", "true or false")
    text_format = _text_format(data.get("text"))
    if text_format["type"] != "text":
        body["response_format"] = _response_format(text_format)
    top_logprobs = opt_int(data, "top_logprobs", minimum=0, maximum=20)
    if top_logprobs is not None or "message.output_text.logprobs" in _include(data.get("include")):
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs or 0
    if _stream(data):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if (script := data.get("cortex_script")) is not None:
        body["cortex_script"] = require_type(script, str, "cortex_script", "a string")
    echo = _echo(data, model, tools, text_format, top_logprobs)
    return Translated(body, echo, items, conversation, tools.namespaced, tools.dropped)


def session_hints(data: dict) -> dict[str, str]:
    """`user` and `prompt_cache_key`, carried into the chat call as they are: prefix-affine routing reads a
    session's hints from the translated call alone (`prefix_map.HINT_FIELDS`), and the neurons' chat dialect
    has both fields (ignored there, so nothing changes for the model). Only non-empty strings: anything else
    names no session (and `check_lengths` has bounded them to 64 characters)."""
    return {name: data[name] for name in HINT_FIELDS if isinstance(data.get(name), str) and data[name]}


def wants_store(data: dict) -> bool:
    """`store`, true unless the client says false (OpenAI's default)."""
    value = data.get("store")
    return value is None or require_type(value, bool, "store", "true or false")


def _instructions(value: Any) -> list[dict]:
    if value is None or value == "":
        return []
    return [{"role": "system", "content": require_type(value, str, "instructions", "a string")}]


def _sampling(data: dict) -> dict:
    out: dict[str, Any] = {}
    if (max_tokens := opt_int(data, "max_output_tokens", minimum=1)) is not None:
        out["max_tokens"] = max_tokens
    if (temperature := opt_float(data, "temperature", minimum=0, maximum=2)) is not None:
        out["temperature"] = temperature
    if (top_p := opt_float(data, "top_p", minimum=0, maximum=1)) is not None:
        out["top_p"] = top_p
    truncation = data.get("truncation")
    if truncation not in (None, "disabled"):
        raise bad_request(f'truncation: {truncation!r} is not supported; the input is never cut here, so only '
                          '"disabled" is (shorten the input yourself)', param="truncation")
    return out


def _stream(data: dict) -> bool:
    value = data.get("stream")
    return bool(value is not None and require_type(value, bool, "stream", "true or false"))


def _text_format(value: Any) -> dict:
    if value is None:
        return {"type": "text"}
    if not isinstance(value, dict):
        raise bad_request("text: expected an object with a format", param="text")
    fmt = value.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise bad_request('text.format.type: expected "text", "json_object" or "json_schema"', param="text.format")
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise bad_request("text.format.name: required for json_schema", param="text.format")
    if not isinstance(fmt.get("schema"), dict):
        raise bad_request("text.format.schema: required, a JSON schema object", param="text.format")
    out = {"type": "json_schema", "name": fmt["name"], "schema": fmt["schema"],
           "strict": require_type(fmt.get("strict", False), bool, "text.format.strict", "true or false")}
    if isinstance(fmt.get("description"), str):
        out["description"] = fmt["description"]
    return out


def _response_format(fmt: dict) -> dict:
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


def _include(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request("include: expected a list of strings", param="include")
    for i, entry in enumerate(value):
        if entry not in INCLUDABLE:
            raise bad_request(f"include[{i}]: {entry!r} is not one of {', '.join(INCLUDABLE)}", param="include")
    return value


def _metadata(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise bad_request(f"metadata: expected an object of at most {MAX_METADATA} pairs", param="metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise bad_request(f"metadata.{key[:64]}: keys are at most 64 characters and values strings of at "
                              "most 512", param="metadata")
    return value


def _echo(data: dict, model: str, tools: Tools, text_format: dict, top_logprobs: int | None) -> dict:
    """The settings the Response object reports: what was asked, or the default that applied; and, only when
    there are any, the hosted tools the model was not offered (`cortex_dropped_tools`, a cortex extension)."""
    dropped = {"cortex_dropped_tools": tools.dropped} if tools.dropped else {}
    return {
        "model": model, "instructions": data.get("instructions"),
        "previous_response_id": data.get("previous_response_id"),
        "max_output_tokens": data.get("max_output_tokens"),
        "temperature": data["temperature"] if data.get("temperature") is not None else 1.0,
        "top_p": data["top_p"] if data.get("top_p") is not None else 1.0,
        "tools": tools.echo,
        "tool_choice": data.get("tool_choice") or "auto",
        "parallel_tool_calls": data.get("parallel_tool_calls") is not False,
        "text": {"format": text_format}, "top_logprobs": top_logprobs or 0, "truncation": "disabled",
        "store": wants_store(data), "metadata": _metadata(data.get("metadata")),
        "reasoning": {"effort": None, "summary": None}, "background": False, "service_tier": "default",
        "max_tool_calls": None, "user": data.get("user"), "safety_identifier": data.get("safety_identifier"),
        "prompt_cache_key": data.get("prompt_cache_key"), **dropped,
    }
