"""What a Responses request may leave in the store: OpenAI's lengths for the strings no model reads.

Input item ids, `call_id`s and the echoed identifiers are kept in the store (and echoed) but never
tokenised, so the neuron's context check never sees them: 10 MB ids and 30 MB `user` fields once
took the gateway from 48 to 875 MiB. They are bounded here as OpenAI bounds them, with OpenAI's own
error (`string_above_max_length`, the field as `param`), before anything is translated. Everything
else a stored response holds is either read by the model (and so bounded by its context) or counted
by the store's byte bounds (`ResponseStore`).
"""

from __future__ import annotations

from typing import Any

from neuron.shared.errors import bad_request

# OpenAI's limits, as its API enforces them (its errors name them): ids and call ids of input items 64,
# user and prompt_cache_key 64, safety_identifier 128 (the SDK's docstring), a json_schema's name 64.
ITEM_ID_MAX = 64
TOP_LEVEL_MAX = {"user": 64, "prompt_cache_key": 64, "safety_identifier": 128}
FORMAT_NAME_MAX = 64


def check_lengths(data: dict) -> None:
    """Refuse a request whose unread strings are longer than OpenAI allows."""
    for key, limit in TOP_LEVEL_MAX.items():
        _check(data.get(key), limit, key)
    items = data.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                _check(item.get("id"), ITEM_ID_MAX, f"input[{i}].id")
                _check(item.get("call_id"), ITEM_ID_MAX, f"input[{i}].call_id")
    fmt = data.get("text", {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict):
        _check(fmt.get("name"), FORMAT_NAME_MAX, "text.format.name")


def _check(value: Any, limit: int, param: str) -> None:
    if isinstance(value, str) and len(value) > limit:
        raise bad_request(f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, "
                          f"but got a string with length {len(value)} instead.", param=param,
                          code="string_above_max_length")
