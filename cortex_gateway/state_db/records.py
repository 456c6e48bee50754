"""What the state database hands out and takes in: typed records, the key hash, and its errors.

The layer never sees a key itself: callers hash it (`hash_key`) and store or look up the hash, so a
secret cannot reach the database, its logs or a backup. Records are frozen dataclasses, so a cached
key cannot be changed behind the cache's back.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from neuron.shared.config_fields import StartupError

PRIORITIES = ("high", "normal", "low")
KEY_PREFIX = "sk-cortex-"
# The settings a key is made with and that update_key may change; name, hash and times are the layer's.
SETTINGS = ("models", "rpm", "tpm", "max_concurrent", "budget_tokens", "budget_window", "priority")
_COUNTS = ("rpm", "tpm", "max_concurrent", "budget_tokens")
# A name goes into URLs (/admin/keys/{name}), metric labels, logs and shell completion: plain characters only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class StateError(StartupError):
    """The database cannot be reached, opened or migrated; at start, `cortex serve` prints it as one line.

    `transient`: the database may answer if asked again (the server refused or dropped the connection, is
    starting up, timed out, or its host name did not resolve), decided by the driver from the error's type
    or SQLSTATE; a start waits and retries those, and exits at once on the others (a bad URL or password, a
    database that does not exist, a failed migration), which nothing but a person fixes. `reason`: the
    driver's own words, without the where (for a retry's log line)."""

    def __init__(self, message: str, *, transient: bool = False, reason: str | None = None):
        super().__init__(message)
        self.transient = transient
        self.reason = reason or message


class DuplicateKeyName(ValueError):
    def __init__(self, name: str):
        super().__init__(f"a key named {name!r} already exists (names stay taken after a revocation); pick another")
        self.name = name


class KeyNotFound(LookupError):
    def __init__(self, name: str):
        super().__init__(f"no active key named {name!r}")
        self.name = name


class InvalidKeySetting(ValueError):
    """A setting out of its range; `field` names it, for an answer that says which."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def new_secret() -> str:
    """A fresh key: 256 random bits, prefixed so that a leaked one is recognisable in a scan."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """sha256 of the key, hex: what is stored and looked up. Keys are random, so no salt or stretching is
    needed (a slow hash would only slow the request path)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_new_key(name: str, key_hash: str) -> None:
    """A new key's name and hash, checked; the hash check keeps a key itself from being stored by mistake."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidKeySetting("name", f"expected 1 to 64 letters, digits, '.', '_' or '-' (first a letter or "
                                        f"digit), got {name!r}")
    if not isinstance(key_hash, str) or not _SHA256.fullmatch(key_hash):
        raise InvalidKeySetting("key_hash", "expected the key's sha256 in hex (hash_key(key)), never the key itself")


@dataclass(frozen=True)
class KeySettings:
    """What a key may do. None: no limit (models None: every model; an empty tuple: none)."""

    models: tuple[str, ...] | None = None  # ids, aliases or glob patterns, matched by the allow-list layer
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_tokens: int | None = None
    budget_window: str | None = None  # "1h", "1d", "30d", "month": read by the budget layer, kept as given
    priority: str = "normal"

    def __post_init__(self):
        check_settings({f.name: getattr(self, f.name) for f in fields(self)})
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))  # a list given: kept as a tuple, hashable


def check_settings(values: Mapping[str, Any]) -> None:
    """Raise InvalidKeySetting for the first value out of range (only the names given are checked)."""
    for name, value in values.items():
        if name not in SETTINGS:
            raise InvalidKeySetting(name, f"not a key setting (one of {', '.join(SETTINGS)})")
        if name in _COUNTS and value is not None and (type(value) is not int or value < 0):
            raise InvalidKeySetting(name, f"expected an integer >= 0 or null, got {value!r}")
        if name == "priority" and value not in PRIORITIES:
            raise InvalidKeySetting(name, f"expected one of {', '.join(PRIORITIES)}, got {value!r}")
        if name == "budget_window" and value is not None and (not isinstance(value, str) or not value):
            raise InvalidKeySetting(name, f"expected a window such as \"1d\" or null, got {value!r}")
        if name == "models" and value is not None and not _strings(value):
            raise InvalidKeySetting(name, f"expected a list of model ids or patterns or null, got {value!r}")


def _strings(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)


@dataclass(frozen=True)
class ApiKey:
    """A key as stored. `key_hash` is no secret, but answers should still leave it out (`public`)."""

    name: str
    key_hash: str
    settings: KeySettings
    created_at: float  # seconds since the epoch, as every time here
    updated_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict:
        """The key for an answer or `cortex keys list`: its name, settings and times, no hash."""
        out = {"name": self.name, **{f: getattr(self.settings, f) for f in SETTINGS}}
        out["models"] = None if self.settings.models is None else list(self.settings.models)
        return {**out, "created_at": self.created_at, "updated_at": self.updated_at, "revoked_at": self.revoked_at}


@dataclass(frozen=True)
class Reservation:
    """Tokens held against a key's budget for one request until `settle` or `release`."""

    id: str
    key: str
    model: str
    window: str  # the label of the budget window's period it counts in, chosen by the caller
    tokens: int
    instance_id: str  # the gateway holding it: its stale ones are released at its next start
    created_at: float


@dataclass(frozen=True)
class UsageRow:
    """One key's use of one model in one window: settled usage, and what is reserved and not yet settled."""

    key: str
    model: str
    window: str
    prompt_tokens: int
    completion_tokens: int
    requests: int
    reserved_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Released:
    """What `release_stale` let go: reservations and their tokens."""

    reservations: int
    tokens: int


def models_to_text(models: tuple[str, ...] | None) -> str | None:
    """The allow-list column: a JSON list, or NULL for every model (the same text in both dialects)."""
    return None if models is None else json.dumps(list(models))


def models_from_text(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))
