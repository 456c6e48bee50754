"""The usage spool (cortex_gateway.state_db.spool) and its replay, on SQLite and on a real PostgreSQL:
a spool replayed twice (as after a `kill -9` between the commit and the file's delete) bills each request
once, a line cut short by a kill mid-write is skipped, and which failures to connect a start waits out.

The gateway over real processes, with the database stopped and a gateway killed, is in
tests/test_state_outage_start.py."""

from __future__ import annotations

import shutil
import socket

import asyncpg
import pytest

from cortex_gateway.state_db import StateDB, StateError
from cortex_gateway.state_db.postgres import _transient
from cortex_gateway.state_db.spool import SpooledUsage, UsageSpool
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_state_db import db_url  # noqa: F401 - a fixture

LINES = [("alice", "m1", "2026-12", 10, 5), ("bob", "m1", "2026-12", 7, 3), ("alice", "m2", "2026-12", 1, 1)]


async def spooled(tmp_path, url: str) -> tuple[StateDB, UsageSpool]:
    spool = UsageSpool.in_dir(tmp_path / "spool")
    db = await StateDB.open(url, None, "gw-a", spool=spool)
    for key, model, period, prompt, completion in LINES:
        await spool.append(SpooledUsage.new(key, model, period, prompt, completion, 0.0))
    return db, spool


def totals(rows) -> dict[str, tuple[int, int]]:
    """Tokens and requests per key."""
    out: dict[str, tuple[int, int]] = {}
    for row in rows:
        tokens, requests = out.get(row.key, (0, 0))
        out[row.key] = (tokens + row.prompt_tokens + row.completion_tokens, requests + row.requests)
    return out


async def test_a_spool_replayed_twice_bills_each_request_once(tmp_path, db_url):  # noqa: F811
    db, spool = await spooled(tmp_path, db_url)
    try:
        kept = tmp_path / "kept.jsonl"
        shutil.copy(spool.path, kept)
        assert await db.replay_spool() == 3
        assert not spool.pending()
        shutil.copy(kept, spool.aside)  # as a kill -9 after the commit, before the delete, leaves it
        assert spool.pending()
        assert await db.replay_spool() == 0
        assert not spool.pending()
        assert totals(await db.usage()) == {"alice": (17, 2), "bob": (10, 1)}
        assert await db.budget_used("alice", "2026-12") == (17, 0)
    finally:
        await db.close()


async def test_a_line_cut_short_is_skipped_and_the_rest_billed(tmp_path, db_url):  # noqa: F811
    db, spool = await spooled(tmp_path, db_url)
    try:
        with open(spool.path, "ab") as f:
            f.write(b'{"id": "cut", "key": "alice", "mod')  # a kill mid-write: never reported
        assert await db.replay_spool() == 3
        assert totals(await db.usage()) == {"alice": (17, 2), "bob": (10, 1)}
    finally:
        await db.close()


async def test_an_unreadable_spool_is_a_clear_state_error(tmp_path):
    """A spool that cannot be read (here a directory where the file should be: root reads any file) stops a
    start with one line naming it and the fix, not a traceback; nothing is billed or deleted."""
    spool = UsageSpool.in_dir(tmp_path / "spool")
    spool.aside.mkdir(parents=True)
    db = await StateDB.open(f"sqlite://{tmp_path / 'state.db'}", None, "gw-a", spool=spool)
    try:
        with pytest.raises(StateError, match=r"usage spool .* cannot be read or moved aside: .*fix its permissions"):
            await db.replay_spool()
        assert spool.aside.is_dir()
    finally:
        await db.close()


async def test_a_spooled_settle_settles_its_reservation_once(tmp_path, db_url):  # noqa: F811
    spool = UsageSpool.in_dir(tmp_path / "spool")
    db = await StateDB.open(db_url, None, "gw-a", spool=spool)
    try:
        held = await db.reserve("carol", "m1", "2026-12", 100, 1000)
        done = await db.reserve("dave", "m1", "2026-12", 100, 1000)
        await db.settle(done, 20, 10)  # a settle that committed, its answer lost: spooled all the same
        for r in (held, done):
            await spool.append(SpooledUsage.new(r.key, r.model, r.window, 20, 10, 0.0, r.id))
        assert await db.replay_spool() == 1
        assert await db.budget_used("carol", "2026-12") == (30, 0)  # settled: its hold gone, its usage billed
        assert await db.budget_used("dave", "2026-12") == (30, 0)  # not billed twice
        assert totals(await db.usage()) == {"carol": (30, 1), "dave": (30, 1)}
    finally:
        await db.close()


async def test_usage_the_database_cannot_take_goes_to_the_spool(tmp_path):
    spool = UsageSpool.in_dir(tmp_path / "spool")
    db = await StateDB.open(f"sqlite://{tmp_path / 'state.db'}", None, "gw-a", spool=spool)
    try:
        assert await db.record_usage("alice", "m1", "2026-12", 1, 2) is None  # committed: nothing spooled
        assert not spool.pending()
        (tmp_path / "state.db").unlink()
        (tmp_path / "state.db").mkdir()  # the file is gone, a directory in its place: every write fails
        await db._driver.close()
        db._driver = type(db._driver)(tmp_path / "state.db")
        failure = await db.record_usage("alice", "m1", "2026-12", 3, 4)
        assert failure is not None and "state.db" in str(failure)
        assert [SpooledUsage.from_line(line).prompt_tokens for line in spool.path.read_bytes().splitlines()] == [3]
    finally:
        await db.close()


@pytest.mark.parametrize(("error", "transient"), [
    (ConnectionRefusedError(111, "Connection refused"), True),
    (socket.gaierror(-3, "Temporary failure in name resolution"), True),
    (TimeoutError(), True),
    (asyncpg.CannotConnectNowError("the database system is starting up"), True),  # 57P03
    (asyncpg.TooManyConnectionsError("sorry, too many clients already"), True),  # 53300
    (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),  # 57P01
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
    (asyncpg.InvalidPasswordError("password authentication failed"), False),  # 28P01
    (asyncpg.InvalidCatalogNameError('database "x" does not exist'), False),  # 3D000
    (asyncpg.UndefinedTableError('relation "x" does not exist'), False),  # 42P01: a migration's SQL
    (ValueError("invalid DSN"), False),
])
def test_which_failures_a_start_waits_out(error, transient):
    assert _transient(asyncpg, error) is transient


async def test_usage_billed_whose_answer_was_lost_is_not_billed_again_from_the_spool(tmp_path, db_url):  # noqa: F811
    """A direct bill commits, its answer is lost (the database went down between), the gateway spools the
    same request: the replay finds its id billed and bills nothing. Pruned past the kept span, the id is gone."""
    from cortex_gateway.state_db import usage

    spool = UsageSpool.in_dir(tmp_path / "spool")
    db = await StateDB.open(db_url, None, "gw-a", spool=spool)
    try:
        entry = SpooledUsage.new("carol", "m1", "2026-12", 4, 2, db.clock())
        assert await db._driver.write(lambda: usage.record("carol", "m1", "2026-12", 4, 2, billed=(entry.id, entry.at)))
        await spool.append(entry)  # what record_usage does when the commit's answer does not come back
        assert await db.replay_spool() == 0
        assert totals(await db.usage("carol")) == {"carol": (6, 1)}
        assert await db.prune_billed(-1.0) == 1  # every id is past a span that ends in the future
        assert await db.prune_billed(-1.0) == 0
    finally:
        await db.close()
