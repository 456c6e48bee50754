"""The state database's operations, each test run on SQLite (a temp file) and on a real PostgreSQL.

PostgreSQL is started by the tests themselves (tests/postgres_server.py); where it is not installed the
PostgreSQL cases are skipped with the reason printed. The concurrency tests decide by counts, not by
timing: fifty reservations are issued at once against a budget that fits ten, through one access layer
and through two (two pools, or two SQLite connections on one file: two gateways), and exactly ten
must hold.
"""

from __future__ import annotations

import asyncio

import pytest

from cortex_gateway.state_db import (
    DuplicateKeyName,
    InvalidKeySetting,
    KeyNotFound,
    KeySettings,
    StateDB,
    StateError,
    hash_key,
    new_secret,
)
from cortex_gateway.state_db.migrations import MIGRATIONS
from cortex_gateway.state_db.script import execute, rows
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures

DIALECTS = ["sqlite", "postgresql"]
ALL_VERSIONS = [(m.version,) for m in MIGRATIONS]  # every migration, applied once


@pytest.fixture(params=DIALECTS)
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")


async def opened(url: str, instance: str = "gw-a", **kwargs) -> StateDB:
    return await StateDB.open(url, None, instance, **kwargs)


async def raw(db: StateDB, sql: str, *args) -> list[tuple]:
    """A query past the layer, to look at what is stored."""
    def script():
        return (yield rows(sql, *args))
    return await db._driver.read(script)


async def write_raw(db: StateDB, sql: str, *args) -> None:
    def script():
        yield execute(sql, *args)
    await db._driver.write(script)


async def totals_match_their_parts(db: StateDB) -> None:
    """budget_totals is the sum of usage's tokens and of the open reservations, per key and period."""
    totals = {(k, p): (int(s), int(r)) for k, p, s, r in await raw(db, "SELECT key_name, period, settled_tokens, "
                                                                   "reserved_tokens FROM budget_totals")}
    settled = {(k, p): int(t) for k, p, t in await raw(db, "SELECT key_name, period, SUM(prompt_tokens + "
                                                       "completion_tokens) FROM usage GROUP BY key_name, period")}
    held = {(k, p): int(t) for k, p, t in await raw(db, "SELECT key_name, period, SUM(tokens) FROM reservations "
                                                    "GROUP BY key_name, period")}
    for where, (s, r) in totals.items():
        assert (s, r) == (settled.get(where, 0), held.get(where, 0)), where


# -- migrations ---------------------------------------------------------------------------------
async def test_a_new_database_is_migrated_once_and_a_second_open_applies_nothing(db_url):
    db = await opened(db_url)
    try:
        assert await raw(db, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS
        assert await db.migrate() == []
    finally:
        await db.close()
    again = await opened(db_url)
    try:
        assert await again.migrate() == []
        assert await raw(again, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS
    finally:
        await again.close()


async def test_a_database_from_a_newer_cortex_is_refused_naming_its_version(db_url):
    db = await opened(db_url)
    try:
        await write_raw(db, "INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    finally:
        await db.close()
    with pytest.raises(StateError, match="schema version 99.*upgrade cortex"):
        await opened(db_url)


async def test_two_gateways_migrating_at_once_both_start(db_url):
    first, second = await asyncio.gather(opened(db_url, "gw-a"), opened(db_url, "gw-b"))
    try:
        assert await raw(first, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS
    finally:
        await asyncio.gather(first.close(), second.close())


# -- keys ----------------------------------------------------------------------------------------
async def test_keys_are_made_found_by_hash_listed_updated_and_revoked(db_url):
    db = await opened(db_url)
    try:
        secret = new_secret()
        made = await db.create_key("alice", hash_key(secret), KeySettings(models=["m1", "org/*"], rpm=60,
                                                                          budget_tokens=1000, budget_window="1d",
                                                                          priority="high"))
        assert made.settings.models == ("m1", "org/*") and made.active and made.created_at == made.updated_at
        assert await db.get_key_by_hash(hash_key(secret)) == made
        assert await db.get_key_by_hash(hash_key("sk-not-a-key")) is None
        await db.create_key("bob", hash_key(new_secret()))
        assert [k.name for k in await db.list_keys()] == ["alice", "bob"]

        changed = await db.update_key("alice", {"rpm": None, "tpm": 500, "models": None})
        assert (changed.settings.rpm, changed.settings.tpm, changed.settings.models) == (None, 500, None)
        assert changed.settings.budget_tokens == 1000 and changed.updated_at >= made.updated_at

        revoked = await db.revoke_key("alice")
        assert not revoked.active and await db.get_key_by_hash(hash_key(secret)) is None
        assert [k.name for k in await db.list_keys()] == ["bob"]
        assert [k.name for k in await db.list_keys(include_revoked=True)] == ["alice", "bob"]
        assert (await db.get_key("alice")).revoked_at == revoked.revoked_at
    finally:
        await db.close()


async def test_a_duplicate_name_is_refused_saying_so(db_url):
    db = await opened(db_url)
    try:
        await db.create_key("alice", hash_key(new_secret()))
        with pytest.raises(DuplicateKeyName, match="a key named 'alice' already exists"):
            await db.create_key("alice", hash_key(new_secret()))
        await db.revoke_key("alice")
        with pytest.raises(DuplicateKeyName):  # a revoked key's name stays its own, with its usage
            await db.create_key("alice", hash_key(new_secret()))
        assert len(await db.list_keys(include_revoked=True)) == 1
    finally:
        await db.close()


async def test_unknown_revoked_and_bad_settings_are_refused_naming_what(db_url):
    db = await opened(db_url)
    try:
        with pytest.raises(KeyNotFound, match="no active key named 'ghost'"):
            await db.update_key("ghost", {"rpm": 1})
        with pytest.raises(KeyNotFound):
            await db.revoke_key("ghost")
        with pytest.raises(InvalidKeySetting, match="^name: expected 1 to 64 letters"):
            await db.create_key("../admin", hash_key(new_secret()))
        secret = new_secret()
        with pytest.raises(InvalidKeySetting, match="^key_hash: .*never the key itself"):
            await db.create_key("alice", secret)  # the key where its hash belongs: refused, never stored
        await db.create_key("alice", hash_key(secret))
        with pytest.raises(InvalidKeySetting, match="^priority: expected one of high, normal, low"):
            await db.update_key("alice", {"priority": "urgent"})
        with pytest.raises(InvalidKeySetting, match="^rpm: expected an integer >= 0"):
            await db.update_key("alice", {"rpm": -1})
        with pytest.raises(InvalidKeySetting, match="^name: not a key setting"):
            await db.update_key("alice", {"name": "mallory"})
        await db.revoke_key("alice")
        with pytest.raises(KeyNotFound):
            await db.update_key("alice", {"rpm": 1})
        with pytest.raises(KeyNotFound):
            await db.revoke_key("alice")
    finally:
        await db.close()


async def test_the_key_itself_is_never_stored(db_url, tmp_path):
    db = await opened(db_url)
    secret = new_secret()
    try:
        await db.create_key("alice", hash_key(secret))
        stored = [await raw(db, f"SELECT * FROM {table}") for table in ("api_keys", "usage", "reservations")]
        assert secret not in repr(stored) and hash_key(secret) in repr(stored)
    finally:
        await db.close()
    if db.dialect == "sqlite":
        assert all(secret.encode() not in p.read_bytes() for p in tmp_path.glob("state.db*"))


# -- reservations --------------------------------------------------------------------------------
async def test_fifty_reservations_at_once_against_room_for_ten_hold_exactly_ten(db_url):
    db = await opened(db_url)
    try:
        held = await asyncio.gather(*(db.reserve("alice", "m1", "2026-12-02", 100, 1000) for _ in range(50)))
        assert sum(r is not None for r in held) == 10
        assert await db.budget_used("alice", "2026-12-02") == (0, 1000)
        await totals_match_their_parts(db)
    finally:
        await db.close()


async def test_two_gateways_reserving_at_once_hold_exactly_the_budget(db_url):
    """Two access layers on one database (two asyncpg pools, two SQLite connections on one file), as two
    gateways have: 25 reservations each, at once, against room for 10."""
    one, two = await opened(db_url, "gw-a"), await opened(db_url, "gw-b")
    try:
        held = await asyncio.gather(*(gw.reserve("alice", "m1", "w", 7, 70) for _ in range(25) for gw in (one, two)))
        assert sum(r is not None for r in held) == 10
        assert {r.instance_id for r in held if r} <= {"gw-a", "gw-b"}
        assert await one.budget_used("alice", "w") == (0, 70)
        await totals_match_their_parts(one)
    finally:
        await asyncio.gather(one.close(), two.close())


async def test_settling_bills_the_real_usage_once_and_frees_the_rest(db_url):
    db = await opened(db_url)
    try:
        first = await db.reserve("alice", "m1", "w", 600, 1000)
        assert await db.reserve("alice", "m2", "w", 600, 1000) is None  # 600 + 600 > 1000
        assert await db.settle(first, 100, 50) is True
        assert await db.settle(first, 100, 50) is False  # settled twice, billed once
        second = await db.reserve("alice", "m2", "w", 600, 1000)  # 150 settled + 600 fits
        assert second is not None and await db.budget_used("alice", "w") == (150, 600)
        assert await db.reserve("alice", "m2", "w", 251, 1000) is None and await db.reserve("bob", "m2", "w", 251, 1000)
        rows_ = {(u.key, u.model): u for u in await db.usage()}
        assert (rows_["alice", "m1"].prompt_tokens, rows_["alice", "m1"].completion_tokens) == (100, 50)
        assert (rows_["alice", "m1"].requests, rows_["alice", "m1"].reserved_tokens) == (1, 0)
        assert (rows_["alice", "m2"].requests, rows_["alice", "m2"].reserved_tokens) == (0, 600)
        assert [u.key for u in await db.usage("bob")] == ["bob"]
        await totals_match_their_parts(db)
    finally:
        await db.close()


async def test_windows_count_apart_and_no_budget_always_fits(db_url):
    db = await opened(db_url)
    try:
        assert await db.reserve("alice", "m1", "2026-12-01", 10, 10)
        assert await db.reserve("alice", "m1", "2026-12-01", 1, 10) is None
        assert await db.reserve("alice", "m1", "2026-12-02", 10, 10)  # the next window's own room
        assert await db.reserve("alice", "m1", "2026-12-02", 0, 10)  # nothing more: fits
        unlimited = await db.reserve("carol", "m1", "w", 10**12, None)
        assert unlimited and await db.settle(unlimited, 5, 5)
        assert await db.budget_used("carol", "w") == (10, 0)
    finally:
        await db.close()


async def test_a_release_gives_the_tokens_back_unbilled(db_url):
    db = await opened(db_url)
    try:
        held = await db.reserve("alice", "m1", "w", 10, 10)
        assert await db.release(held) is True and await db.release(held) is False
        assert await db.settle(held, 1, 1) is False  # released: nothing to settle
        assert await db.budget_used("alice", "w") == (0, 0)
        assert [(u.requests, u.total_tokens) for u in await db.usage("alice")] == [(0, 0)]
    finally:
        await db.close()


async def test_release_stale_lets_go_of_one_instance_only_and_keeps_settled_usage(db_url):
    one, two = await opened(db_url, "gw-a"), await opened(db_url, "gw-b")
    try:
        settled = await one.reserve("alice", "m1", "w", 40, 100)
        await one.settle(settled, 20, 10)
        await one.reserve("alice", "m1", "w", 30, 100)
        await one.reserve("bob", "m1", "w", 5, None)
        kept = await two.reserve("alice", "m1", "w", 20, 100)
        released = await two.release_stale("gw-a")  # what gw-a's next start does, as gw-a
        assert (released.reservations, released.tokens) == (2, 35)
        assert await one.budget_used("alice", "w") == (30, 20)
        assert await one.release_stale() == (await one.release_stale())  # nothing left: idempotent
        assert await two.settle(kept, 5, 5)
        await totals_match_their_parts(one)
    finally:
        await asyncio.gather(one.close(), two.close())


async def test_a_cancelled_settle_still_commits_and_a_cancelled_reserve_is_released(db_url):
    """A client that leaves cancels its handler: the write it was waiting on still ends, and a reservation
    made for nobody is given back; `close` waits for both."""
    db = await opened(db_url)
    held = await db.reserve("alice", "m1", "w", 50, 100)
    settling = asyncio.ensure_future(db.settle(held, 7, 3))
    reserving = asyncio.ensure_future(db.reserve("alice", "m1", "w", 50, 100))
    await asyncio.sleep(0)  # one turn of the loop: both are inside their writes
    settling.cancel()
    reserving.cancel()
    await asyncio.gather(settling, reserving, return_exceptions=True)
    await db.close()
    after = await opened(db_url)
    try:
        assert await after.budget_used("alice", "w") == (10, 0)
    finally:
        await after.close()


async def test_bad_counts_are_refused(db_url):
    db = await opened(db_url)
    try:
        with pytest.raises(ValueError, match="counts >= 0"):
            await db.reserve("alice", "m1", "w", -1, 10)
        held = await db.reserve("alice", "m1", "w", 1, 10)
        with pytest.raises(ValueError, match=">= 0"):
            await db.settle(held, -1, 0)
        assert await db.settle(held, 1, 0)
    finally:
        await db.close()


async def test_both_dialects_have_the_same_tables_columns_and_types(tmp_path, request):
    """One logical schema: SQLite's declared columns against PostgreSQL's catalogue, table by table."""
    pg_url = request.getfixturevalue("postgres_url")  # first: where PostgreSQL is absent, skipped before opening
    lite, pg = await opened(f"sqlite://{tmp_path / 'state.db'}"), await opened(pg_url)
    try:
        tables = [t for (t,) in await raw(lite, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        in_sqlite = {t: [(name, kind.lower(), bool(notnull or pk)) for _cid, name, kind, notnull, _d, pk
                         in await raw(lite, f"SELECT * FROM pragma_table_info('{t}')")] for t in tables}
        in_postgres = {t: [(name, kind, nullable == "NO") for name, kind, nullable in await raw(
            pg, "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position", t)] for t in tables}
        assert set(tables) == {"api_keys", "budget_totals", "drains", "events", "pins", "reservations", "responses",
                               "schema_migrations", "spooled_usage", "tpm_buckets", "usage"}
        assert in_sqlite == in_postgres
    finally:
        await asyncio.gather(lite.close(), pg.close())


async def test_closing_twice_is_harmless(db_url):
    db = await opened(db_url)
    await db.close()
    await db.close()
