"""The admin API's key bodies, checked: each field's type and range, and the budget window's grammar.

Pure: a body in, the settings out, or an `ApiError` 400 naming the field and what to send. The state
layer checks its records again (`state_db.records.check_settings`); this layer is the one that words
the answer for a person typing `cortex keys create`, and the one that knows the window grammar.

Windows: `<n>h` (hours) or `<n>d` (days), n from 1 to 9999, rolling over every n hours or days; or
`month`, the calendar month (UTC). The budget layer reads them (`window_seconds`).
"""

from __future__ import annotations

import re
from typing import Any

from cortex_gateway.state_db import PRIORITIES, SETTINGS
from neuron.shared.errors import ApiError, bad_request

_WINDOW = re.compile(r"([1-9][0-9]{0,3})([hd])")
_UNIT_S = {"h": 3600, "d": 86400}
MONTH = "month"
# Limits that must allow something (0 would be "never", which is what revoking is for); a budget of 0
# tokens is a real setting (a key that may list models but spend nothing).
_AT_LEAST_ONE = ("rpm", "tpm", "max_concurrent")
MAX_MODELS = 256  # entries in one allow-list
MAX_PATTERN = 256  # characters in one entry


def window_seconds(window: str) -> int | None:
    """The length of a rolling window in seconds; None for `month` (calendar months differ). ValueError
    for anything else."""
    if window == MONTH:
        return None
    found = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if found is None:
        raise ValueError(f"expected a window such as \"1h\", \"1d\", \"30d\" or \"month\", got {window!r}")
    return int(found[1]) * _UNIT_S[found[2]]


def create_body(body: Any) -> tuple[str, dict]:
    """POST /admin/keys: the new key's name and its settings (only the fields given)."""
    data = _object(body)
    if "name" not in data:
        raise bad_request("name: required: send {\"name\": \"alice\", ...} (letters, digits, '.', '_' or '-')",
                          param="name", code="missing_field")
    name = data.pop("name")
    if not isinstance(name, str):
        raise bad_request(f"name: expected a string, got {name!r}", param="name")
    return name, _settings(data)


def update_body(body: Any) -> dict:
    """PATCH /admin/keys/{name}: the settings to change (null clears a limit or the allow-list)."""
    data = _object(body)
    if "name" in data:
        raise bad_request("name: a key cannot be renamed; create a key with the new name and revoke this one",
                          param="name")
    changes = _settings(data)
    if not changes:
        raise bad_request(f"send at least one setting to change: {', '.join(SETTINGS)}", code="missing_field")
    return changes


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request("expected a JSON object such as {\"name\": \"alice\", \"rpm\": 60}")
    return dict(body)


def _settings(data: dict) -> dict:
    for field in data:
        if field not in SETTINGS:
            shown = field if len(field) <= 64 else field[:64] + "..."  # a client's own text: bounded
            raise bad_request(f"{shown}: not a key setting; send any of: name, {', '.join(SETTINGS)}",
                              param=shown, code="unknown_field")
    return {field: _checked(field, value) for field, value in data.items()}


def _checked(field: str, value: Any) -> Any:
    if field == "models":
        return _models(value)
    if field == "priority":
        if value not in PRIORITIES:
            raise bad_request(f"priority: expected one of {', '.join(PRIORITIES)}, got {value!r}", param=field)
        return value
    if value is None:
        return None  # no limit
    if field == "budget_window":
        try:
            window_seconds(value)
        except ValueError as exc:
            raise bad_request(f"budget_window: {exc}", param=field) from None
        return value
    return _count(field, value)


def _count(field: str, value: Any) -> int:
    least = 1 if field in _AT_LEAST_ONE else 0
    if type(value) is not int or value < least:  # bool is an int to Python, not to a person
        raise bad_request(f"{field}: expected an integer >= {least}, or null for no limit, got {value!r}",
                          param=field)
    return value


def _models(value: Any) -> list[str] | None:
    if value is None:
        return None  # every model
    if not isinstance(value, list) or len(value) > MAX_MODELS or not all(_entry(v) for v in value):
        raise bad_request(f"models: expected a list of up to {MAX_MODELS} model ids, aliases or glob patterns "
                          f"(such as [\"qwen-*\", \"fast\"]), or null for every model, got {value!r}"[:400],
                          param="models")
    return value


def _entry(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_PATTERN and value.isprintable()


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict_error", message, code="key_name_taken", param="name")


def unknown_key(name: str) -> ApiError:
    return ApiError(404, "not_found_error", f"no active key named {name!r}; `cortex keys list` lists them",
                    code="key_not_found", param="name")
