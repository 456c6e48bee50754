"""The gateway's state database (docs/state.md): keys, usage and budget reservations, in SQLite or PostgreSQL.

`StateDB` is the one access layer; `records` holds what it takes and returns. asyncpg is imported only
when a PostgreSQL database is opened.
"""

from cortex_gateway.state_db.database import StateDB
from cortex_gateway.state_db.records import (
    PRIORITIES,
    SETTINGS,
    ApiKey,
    DuplicateKeyName,
    InvalidKeySetting,
    KeyNotFound,
    KeySettings,
    Released,
    Reservation,
    StateError,
    UsageRow,
    hash_key,
    new_secret,
)

__all__ = ["PRIORITIES", "SETTINGS", "ApiKey", "DuplicateKeyName", "InvalidKeySetting", "KeyNotFound", "KeySettings",
           "Released", "Reservation", "StateDB", "StateError", "UsageRow", "hash_key", "new_secret"]
