"""OpenAI chat completion -> Anthropic message (non-streaming), and the shared mappings."""

from __future__ import annotations

import json
import uuid


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(openai_id: str | None) -> str:
    """Anthropic ids start with toolu_; keep the OpenAI id inside so tool results map back."""
    if openai_id and openai_id.startswith("toolu_"):
        return openai_id
    return f"toolu_{openai_id or uuid.uuid4().hex[:24]}"


def stop_reason(finish_reason: str | None, matched: str | None, stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "tool_calls":
        return "tool_use", None
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return "end_turn", None


def parse_input(arguments: str) -> dict:
    """Tool arguments as an object; text that is not a JSON object is kept, not lost."""
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):  # RecursionError: arguments nested ~1000 deep (an engine's output)
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def to_anthropic(resp: dict, model: str, stops: list[str]) -> dict:
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": tool_use_id(call.get("id")), "name": fn.get("name", ""),
                        "input": parse_input(fn.get("arguments", "{}"))})
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stops)
    usage = resp.get("usage") or {}
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": anthropic_usage(usage)}


def anthropic_usage(usage: dict) -> dict:
    """OpenAI usage in Anthropic's terms: input_tokens excludes the prompt tokens read from the cache."""
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": usage.get("prompt_tokens", 0) - cached, "output_tokens": usage.get("completion_tokens", 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}
