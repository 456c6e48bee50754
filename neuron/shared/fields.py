"""Readers for the fields of a JSON body, shared by both servers' edges.

Each raises an `ApiError` that names the offending field and what was expected,
so a client sees `max_tokens: must be >= 1, got 0` rather than a traceback.
"""

from __future__ import annotations

from typing import Any

from neuron.shared.errors import bad_request


def require_type(value: Any, kind: type | tuple, field_name: str, expected: str) -> Any:
    # bool is an int in Python; a JSON `true` is never a valid count.
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise bad_request(f"{field_name}: expected {expected}, got a boolean", param=field_name)
    if not isinstance(value, kind):
        raise bad_request(f"{field_name}: expected {expected}, got {type(value).__name__}", param=field_name)
    return value


def opt_int(data: dict, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """An optional integer field, range-checked, with an error naming the field."""
    value = data.get(key)
    if value is None:
        return None
    require_type(value, int, key, "an integer")
    if minimum is not None and value < minimum:
        raise bad_request(f"{key}: must be >= {minimum}, got {value}", param=key)
    if maximum is not None and value > maximum:
        raise bad_request(f"{key}: must be <= {maximum}, got {value}", param=key)
    return value


def opt_float(data: dict, key: str, *, minimum: float | None = None, maximum: float | None = None) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    require_type(value, (int, float), key, "a number")
    if minimum is not None and value < minimum:
        raise bad_request(f"{key}: must be >= {minimum}, got {value}", param=key)
    if maximum is not None and value > maximum:
        raise bad_request(f"{key}: must be <= {maximum}, got {value}", param=key)
    return float(value)


def opt_bool(data: dict, key: str, default: bool = False, *, where: str | None = None) -> bool:
    """An optional true/false field (null reads as the default); `where` names it when it is nested."""
    value = data.get(key)
    if value is None:
        return default
    return require_type(value, bool, where or key, "true or false")


def req_str(data: dict, key: str) -> str:
    if key not in data or data[key] is None:
        raise bad_request(f"{key}: required", param=key, code="missing_field")
    value = require_type(data[key], str, key, "a string")
    if not value.strip():
        raise bad_request(f"{key}: must not be empty", param=key)
    return value


def require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request("request body: expected a JSON object", code="invalid_body")
    return body
