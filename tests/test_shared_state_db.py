"""The state layer's shared parts on a real PostgreSQL (issue 25): pins, drains and events as every gateway
reads them, notifications between two access layers, and the Responses store's bounds per key. Skipped,
saying why, without PostgreSQL (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio

from cortex_gateway.shared_admin import effective_pins
from cortex_gateway.state_db import StateDB
from cortex_gateway.state_db.shared import AdminState
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_database_pins_are_laid_over_the_models_file():
    configured = {"m1": {"n1"}, "m2": {"n2"}}
    state = AdminState({("m1", "n2"): True, ("m2", "n2"): False, ("m3", "n1"): True}, {})
    assert effective_pins(configured, state) == {"m1": {"n1", "n2"}, "m2": set(), "m3": {"n1"}}
    assert configured == {"m1": {"n1"}, "m2": {"n2"}}  # the file's pins are not changed


async def test_a_change_through_one_layer_is_told_to_the_other_and_not_to_itself(postgres_url):  # noqa: F811
    a, b = await StateDB.open(postgres_url, None, "gw-a"), await StateDB.open(postgres_url, None, "gw-b")
    try:
        told = {"a": asyncio.Event(), "b": asyncio.Event()}
        a.on_change("admin", told["a"].set)
        b.on_change("admin", told["b"].set)
        assert await a.listen() and await b.listen()
        await a.set_drain("n1", True)
        await asyncio.wait_for(told["b"].wait(), 30)
        assert not told["a"].is_set()
        assert (await b.admin_state()).drains == {"n1": True}
        await b.set_pin("m1", "n1", False)
        assert (await a.admin_state()).pins == {("m1", "n1"): False}
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_events_of_every_gateway_are_read_newest_last_and_kept_bounded(postgres_url):  # noqa: F811
    a, b = await StateDB.open(postgres_url, None, "gw-a"), await StateDB.open(postgres_url, None, "gw-b")
    try:
        await a.append_events([{"time": 1.0, "kind": "node_up", "node": "n1"}])
        await b.append_events([{"time": 2.0, "kind": "cold_load", "node": "n1", "model": "m"}])
        assert await a.recent_events(10) == [{"time": 1.0, "kind": "node_up", "node": "n1", "gateway": "gw-a"},
                                             {"time": 2.0, "kind": "cold_load", "node": "n1", "model": "m",
                                              "gateway": "gw-b"}]
        await a.append_events([{"time": 3.0 + i, "kind": "x"} for i in range(5)], prune=True)
        assert [e["time"] for e in await b.recent_events(2)] == [6.0, 7.0]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_stored_responses_keep_each_owners_newest_within_the_age_bound(postgres_url):  # noqa: F811
    clock = Clock()
    db = await StateDB.open(postgres_url, None, "gw-a", clock=clock)
    try:
        for i in range(3):
            clock.now += 1
            await db.put_response(f"r{i}", "alice", 10, "{}", max_entries=2, ttl_s=100)
        await db.put_response("bob1", "bob", 10, "{}", max_entries=2, ttl_s=100)
        assert await db.get_response("r0", 100) is None  # alice's third pushed her oldest out
        assert (await db.get_response("r2", 100))[0] == "alice"
        assert await db.get_response("bob1", 100) is not None  # bob's bound is his own
        clock.now += 100
        assert await db.get_response("r2", 100) is None  # older than the age bound: not found
        await db.delete_response("bob1")
        assert await db.get_response("bob1", 1000) is None
    finally:
        await db.close()
