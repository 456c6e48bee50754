"""The api_keys table's operations, as transaction scripts (see `script`): one or two statements each.

A duplicate name is found by `ON CONFLICT DO NOTHING` returning no row, never by catching a driver's
error: the same in both dialects, and PostgreSQL's transaction is not left aborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cortex_gateway.state_db.records import (
    SETTINGS,
    ApiKey,
    DuplicateKeyName,
    KeyNotFound,
    KeySettings,
    check_new_key,
    check_settings,
    models_from_text,
    models_to_text,
)
from cortex_gateway.state_db.script import Script, one, rows

COLUMNS = ("name", "key_hash", *SETTINGS, "created_at", "updated_at", "revoked_at")
_SELECT = ", ".join(COLUMNS)


def key_from_row(row: tuple) -> ApiKey:
    values = dict(zip(COLUMNS, row, strict=True))
    values["models"] = models_from_text(values["models"])
    settings = KeySettings(**{name: values[name] for name in SETTINGS})
    return ApiKey(values["name"], values["key_hash"], settings, values["created_at"], values["updated_at"],
                  values["revoked_at"])


def _column_value(name: str, value: Any) -> Any:
    return models_to_text(None if value is None else tuple(value)) if name == "models" else value


def create_key(name: str, key_hash: str, settings: KeySettings, now: float) -> Script[ApiKey]:
    check_new_key(name, key_hash)
    values = [name, key_hash, *(_column_value(s, getattr(settings, s)) for s in SETTINGS), now, now]
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    row = yield one(f"INSERT INTO api_keys ({_SELECT.removesuffix(', revoked_at')}) VALUES ({marks}) "
                    f"ON CONFLICT DO NOTHING RETURNING {_SELECT}", *values)
    if row is None:
        taken = yield one("SELECT name FROM api_keys WHERE name = $1", name)
        if taken is None:  # the hash is taken: two keys alike, which 256 random bits never are
            raise ValueError("that key is already stored under another name; make a new key")
        raise DuplicateKeyName(name)
    return key_from_row(row)


def get_key_by_hash(key_hash: str) -> Script[ApiKey | None]:
    """The active key with this hash; a revoked or unknown key is None, so no caller can forget to check."""
    row = yield one(f"SELECT {_SELECT} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash)
    return None if row is None else key_from_row(row)


def get_key(name: str) -> Script[ApiKey | None]:
    """The key of this name, revoked or not."""
    row = yield one(f"SELECT {_SELECT} FROM api_keys WHERE name = $1", name)
    return None if row is None else key_from_row(row)


def list_keys(include_revoked: bool = False) -> Script[list[ApiKey]]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    found = yield rows(f"SELECT {_SELECT} FROM api_keys{where} ORDER BY name")
    return [key_from_row(row) for row in found]


def update_key(name: str, changes: Mapping[str, Any], now: float) -> Script[ApiKey]:
    """Change some settings of an active key (the names of `SETTINGS`; None clears a limit)."""
    check_settings(changes)
    names = [n for n in SETTINGS if n in changes]  # the column names come from SETTINGS, never the caller
    sets = ", ".join([f"{n} = ${i}" for i, n in enumerate(names, start=3)] + ["updated_at = $2"])
    row = yield one(f"UPDATE api_keys SET {sets} WHERE name = $1 AND revoked_at IS NULL RETURNING {_SELECT}",
                    name, now, *(_column_value(n, changes[n]) for n in names))
    if row is None:
        raise KeyNotFound(name)
    return key_from_row(row)


def revoke_key(name: str, now: float) -> Script[ApiKey]:
    row = yield one(f"UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE name = $1 AND revoked_at IS NULL "
                    f"RETURNING {_SELECT}", name, now)
    if row is None:
        raise KeyNotFound(name)
    return key_from_row(row)
