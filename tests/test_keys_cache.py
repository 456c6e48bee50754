"""The key cache (cortex_gateway.key_cache) against a fake database: known keys cost no query, unknown ones
are asked once and bounded, and what the admin API changes holds at once and is never undone by a refresh."""

from __future__ import annotations

import asyncio

from cortex_gateway import key_cache
from cortex_gateway.key_cache import KeyCache
from cortex_gateway.state_db import ApiKey, KeySettings


def key(name: str, updated: float = 1.0, **settings) -> ApiKey:
    return ApiKey(name, name.encode().hex().ljust(64, "0"), KeySettings(**settings), 0.0, updated)


class FakeDB:
    """Answers from `keys`; each query counted, and held until `gate` is set when a test wants it held."""

    def __init__(self, *keys: ApiKey):
        self.keys = {k.key_hash: k for k in keys}
        self.by_hash = self.lists = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get_key_by_hash(self, key_hash):
        self.by_hash += 1
        await self.gate.wait()
        return self.keys.get(key_hash)

    async def list_keys(self, include_revoked=False):
        self.lists += 1
        snapshot = list(self.keys.values())
        await self.gate.wait()
        return snapshot

    def on_change(self, topic, callback):  # StateDB's notifications: told of other gateways' changes
        self.told = callback

    async def listen(self):
        return False  # as SQLite: no notifications


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_known_keys_cost_no_query_and_make_the_gateway_keyed():
    db = FakeDB(key("alice"))
    cache = KeyCache(db, {})
    assert not cache.keyed
    await cache.refresh()
    assert cache.keyed and cache.cached(key("alice").key_hash).name == "alice"
    assert db.by_hash == 0


async def test_a_key_made_elsewhere_is_found_by_one_lookup_and_then_cached():
    db = FakeDB()
    cache = KeyCache(db, {})
    await cache.refresh()
    db.keys[key("bob").key_hash] = key("bob")  # made through another gateway on the same database
    assert (await cache.lookup(key("bob").key_hash)).name == "bob"
    assert cache.cached(key("bob").key_hash) is not None and db.by_hash == 1


async def test_one_bad_key_many_times_is_one_query_then_remembered_briefly():
    db, clock = FakeDB(), Clock()
    cache = KeyCache(db, {}, clock=clock)
    db.gate.clear()
    lookups = [asyncio.ensure_future(cache.lookup("f" * 64)) for _ in range(100)]
    await asyncio.sleep(0)
    db.gate.set()
    assert await asyncio.gather(*lookups) == [None] * 100 and db.by_hash == 1
    assert await cache.lookup("f" * 64) is None and db.by_hash == 1  # the negative is cached
    clock.now += key_cache.MISSING_TTL_S + 1
    assert await cache.lookup("f" * 64) is None and db.by_hash == 2  # and forgotten after its time


async def test_a_flood_of_distinct_bad_keys_is_bounded_in_queries_and_memory(monkeypatch):
    monkeypatch.setattr(key_cache, "MISSING_MAX", 50)
    db, clock = FakeDB(), Clock()
    cache = KeyCache(db, {}, clock=clock)
    for second in range(5):
        for i in range(1000):
            assert await cache.lookup(f"{second:04d}{i:060d}") is None
        clock.now += 1.0
    assert db.by_hash <= 5 * key_cache.LOOKUPS_PER_S + key_cache.LOOKUPS_PER_S
    assert len(cache._missing) <= 50 and not cache._lookups


async def test_put_and_revoke_hold_at_once_and_a_stale_refresh_cannot_undo_them():
    alice = key("alice", rpm=10)
    db = FakeDB(alice)
    cache = KeyCache(db, {})
    await cache.refresh()
    db.gate.clear()
    refreshing = asyncio.ensure_future(cache.refresh())  # reads the table as it was: rpm 10, alice active
    await asyncio.sleep(0)
    cache.put(key("alice", updated=2.0, rpm=1))
    db.gate.set()
    assert await refreshing is False
    assert cache.cached(alice.key_hash).settings.rpm == 1
    cache.revoke(alice)
    assert cache.cached(alice.key_hash) is None
    await cache.refresh()  # the fake database never saw the revocation: the cache still refuses the key
    assert cache.cached(alice.key_hash) is None and await cache.lookup(alice.key_hash) is None


async def test_config_keys_need_no_database():
    cache = KeyCache(None, {"a" * 64: key("from-config")})
    await cache.refresh()
    assert cache.keyed and cache.cached("a" * 64).name == "from-config"
    assert await cache.lookup("b" * 64) is None


async def test_revoking_every_key_leaves_the_gateway_keyed():
    alice = key("alice")
    db = FakeDB(alice)
    cache = KeyCache(db, {})
    await cache.refresh()
    cache.revoke(alice)
    assert cache.keyed and not cache.known
    db.keys[alice.key_hash] = ApiKey("alice", alice.key_hash, alice.settings, 0.0, 2.0, revoked_at=2.0)
    restarted = KeyCache(db, {})  # a restart reads the revoked key: still keyed, and the key still refused
    await restarted.refresh()
    assert restarted.keyed and restarted.cached(alice.key_hash) is None
    assert await restarted.lookup(alice.key_hash) is None and db.by_hash == 0


async def test_told_of_a_change_elsewhere_the_table_is_read_once_per_burst_and_the_gateway_keyed():
    db = FakeDB()
    cache = KeyCache(db, {})
    await cache.refresh()
    assert not cache.keyed
    db.keys[key("carol").key_hash] = key("carol")  # made through another gateway, which NOTIFYs
    db.gate.clear()
    db.told()
    await asyncio.sleep(0)
    assert db.lists == 2  # read at once, held at the gate
    for _ in range(4):  # a burst of notifications while that read is held: one more read after it, not four
        db.told()
    db.gate.set()
    await cache.rereads.task
    assert cache.keyed and cache.cached(key("carol").key_hash) is not None
    assert db.lists == 3
