"""Reserving and settling against a clock the test controls (issue 24, item 4): the budget layer's periods
(cortex_gateway/budgets.py) over the real state database (SQLite in tmp_path), as the metering uses them:
a period fills, settling gives back what an answer did not use, and when the clock crosses the period's
end the next one starts empty while the old one's usage stays."""

from __future__ import annotations

import pytest

from cortex_gateway import budgets
from cortex_gateway.state_db import StateDB
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_budgets import at


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_period_fills_settles_and_rolls(tmp_path):
    clock = Clock(at("2026-12-02T04:59:00"))
    db = await StateDB.open(None, tmp_path, "test", clock=clock)
    window = budgets.parse_window("1h")
    try:
        period = window.period(clock())
        first = await db.reserve("alice", "m", period.label, 60, 100)
        assert first is not None
        assert await db.reserve("alice", "m", period.label, 50, 100) is None  # 60 held + 50 > 100
        assert await db.settle(first, 10, 20)  # it used 30 of its 60
        second = await db.reserve("alice", "m", period.label, 50, 100)  # 30 settled + 50 fits
        assert second is not None and await db.budget_used("alice", period.label) == (30, 50)
        assert period.retry_after(clock()) == 60
        clock.now = at("2026-12-02T05:00:00")  # the window rolls: a new period, empty
        rolled = window.period(clock())
        assert rolled.label != period.label
        assert await db.reserve("alice", "m", rolled.label, 100, 100) is not None
        assert await db.settle(second, 50, 0)
        rows = {(r.window, r.total_tokens, r.requests) for r in await db.usage("alice")}
        assert (period.label, 80, 2) in rows and (rolled.label, 0, 0) in rows
        assert await db.budget_used("alice", period.label) == (80, 0)
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request):
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


async def test_usage_recorded_without_a_reservation_counts_as_settled(tmp_path, state_url):
    """A key without a budget holds nothing: `record_usage` bills it in one write, into the same rows and
    totals a settlement adds to (so a budget given later in the period counts what was used before)."""
    db = await StateDB.open(state_url, tmp_path, "test")
    try:
        await db.record_usage("bob", "m", "2026-12", 7, 5)
        await db.record_usage("bob", "m", "2026-12", 1, 2)
        (row,) = await db.usage("bob")
        assert (row.prompt_tokens, row.completion_tokens, row.requests, row.reserved_tokens) == (8, 7, 2, 0)
        assert await db.budget_used("bob", "2026-12") == (15, 0)
        assert await db.reserve("bob", "m", "2026-12", 6, 20) is None  # 15 settled + 6 > 20
    finally:
        await db.close()
