"""The schema, as numbered migrations, and the script that brings a database up to date.

Each migration is applied once, in order, and recorded in `schema_migrations` in the same transaction
as its statements (both dialects have transactional DDL), so a start that dies half-way leaves the
database as it was, and the next start applies it again. Migrating twice applies nothing. Two gateways
starting together on one PostgreSQL take an advisory lock first, so one migrates and the other then
finds the versions recorded; on SQLite, BEGIN IMMEDIATE serialises them the same way.

The logical schema is the same in both dialects: only TEXT, BIGINT and DOUBLE PRECISION columns, which
SQLite reads with its INTEGER and REAL affinities. A migration that needs a dialect's own syntax gives
`sqlite` and `postgresql` statements instead of `both`. Times are seconds since the epoch. Never edit
a released migration: add the next number.
"""

from __future__ import annotations

from dataclasses import dataclass

from cortex_gateway.state_db.records import StateError
from cortex_gateway.state_db.script import Script, execute, rows


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    both: tuple[str, ...] = ()
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.both + (self.sqlite if dialect == "sqlite" else self.postgresql)


KEYS_AND_USAGE = Migration(1, "api keys, usage, budget totals, reservations", both=(
    # A key: its name (unique for good, so its usage stays its own after a revocation), the sha256 of the
    # key itself, and its limits; models is a JSON list of ids or patterns, NULL for every model.
    """CREATE TABLE api_keys (
        name TEXT NOT NULL PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        models TEXT,
        rpm BIGINT, tpm BIGINT, max_concurrent BIGINT, budget_tokens BIGINT, budget_window TEXT,
        priority TEXT NOT NULL DEFAULT 'normal',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION)""",
    # Settled usage per key, model and budget period. key_name is no foreign key: a key of the config
    # file (no row in api_keys) can be counted too.
    """CREATE TABLE usage (
        key_name TEXT NOT NULL, model TEXT NOT NULL, period TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL DEFAULT 0, completion_tokens BIGINT NOT NULL DEFAULT 0,
        requests BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_name, model, period))""",
    # Per key and period, what a reservation is checked against in one conditional UPDATE: the sums of
    # usage's tokens and of the open reservations, kept in the same transactions as those.
    """CREATE TABLE budget_totals (
        key_name TEXT NOT NULL, period TEXT NOT NULL,
        settled_tokens BIGINT NOT NULL DEFAULT 0, reserved_tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_name, period))""",
    # Tokens held for a request in flight, by the gateway instance holding them.
    """CREATE TABLE reservations (
        id TEXT NOT NULL PRIMARY KEY,
        key_name TEXT NOT NULL, model TEXT NOT NULL, period TEXT NOT NULL,
        tokens BIGINT NOT NULL, instance_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX reservations_by_instance ON reservations (instance_id)",
    "CREATE INDEX reservations_by_usage ON reservations (key_name, model, period)",
))

SHARED_ADMIN = Migration(2, "pins and drains made through the admin API, the fleet's event log", both=(
    # A pin or an unpin made through some gateway's admin API, over the models file's pins: pinned 1 or 0.
    """CREATE TABLE pins (
        model TEXT NOT NULL, node TEXT NOT NULL, pinned BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (model, node))""",
    # A node drained (1) or undrained (0) through some gateway's admin API.
    """CREATE TABLE drains (
        node TEXT NOT NULL PRIMARY KEY, draining BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    # The fleet's events (loads, evictions, nodes up and down...) from every gateway; details is a JSON object.
    """CREATE TABLE events (
        time DOUBLE PRECISION NOT NULL, instance_id TEXT NOT NULL, kind TEXT NOT NULL, details TEXT NOT NULL)""",
    "CREATE INDEX events_by_time ON events (time)",
))

STORED_RESPONSES = Migration(3, "the Responses store, shared by gateways on PostgreSQL", both=(
    # A stored response (previous_response_id, GET, DELETE): its owner (the sha256 of the key that made it, ''
    # without keys), its size as the store counts it, and its JSON (the response, its input items, the conversation).
    """CREATE TABLE responses (
        id TEXT NOT NULL PRIMARY KEY, owner TEXT NOT NULL, stored_at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX responses_by_owner ON responses (owner, stored_at)",
))

TPM_BUCKETS = Migration(4, "tokens-per-minute buckets, shared by every gateway", both=(
    # A key's TPM bucket (state_db/tpm.py): its level of tokens at updated_at (the gateways' wall clock),
    # refilled to the present by each script that reads it. Made on the key's first metered request.
    """CREATE TABLE tpm_buckets (
        key_name TEXT NOT NULL PRIMARY KEY,
        level DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
))

SPOOLED_USAGE = Migration(5, "the ids of usage replayed from a gateway's spool", both=(
    # One row per request a gateway spooled on disk while the database was down (cortex_gateway.state_db.spool),
    # written in the transaction that bills it: a spool replayed twice bills each request once.
    "CREATE TABLE spooled_usage (id TEXT NOT NULL PRIMARY KEY, replayed_at DOUBLE PRECISION NOT NULL)",
))

MIGRATIONS: tuple[Migration, ...] = (KEYS_AND_USAGE, SHARED_ADMIN, STORED_RESPONSES, TPM_BUCKETS, SPOOLED_USAGE)
LATEST = MIGRATIONS[-1].version
# Any constant shared by every cortex gateway: the key of the advisory lock migrations take on PostgreSQL.
_LOCK_KEY = 0x636F72746578  # "cortex"


def migrate(dialect: str, now: float) -> Script[list[int]]:
    """Apply the migrations not yet recorded; returns the versions applied (none: it was up to date)."""
    if dialect == "postgresql":
        yield execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    yield execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, "
                  "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
    done = {version for (version,) in (yield rows("SELECT version FROM schema_migrations"))}
    if done and max(done) > LATEST:
        raise StateError(f"the state database is at schema version {max(done)}, and this cortex knows versions "
                         f"up to {LATEST}: upgrade cortex (a newer gateway migrated it)")
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements(dialect):
            yield execute(statement)
        yield execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                      migration.version, migration.name, now)
        applied.append(migration.version)
    return applied
