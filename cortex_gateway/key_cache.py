"""The keys a gateway accepts, in memory: the config file's and the state database's, by sha256 hash.

The request path reads this cache and nothing else for a known key: no database call, not even an
await. The whole table of active keys is read at start, again at once when another gateway on the same
PostgreSQL tells of a change to a key (its NOTIFY: a key made, changed or revoked there holds here from
the next request, and a gateway that served without keys becomes keyed), and every `REFRESH_S` in the
background, the fallback for a notification missed while the listening connection was down; what
this gateway's admin API changes is applied here at once (`put`, `revoke`), so a PATCH or
a revocation holds for this gateway's very next request.

A hash not in the table may be a key made elsewhere since the last refresh, so it is looked up once;
an unknown answer is remembered for `MISSING_TTL_S` in a table of at most `MISSING_MAX` entries (the
oldest go first), concurrent lookups of one hash share one query, and at most `LOOKUPS_PER_S` go to the
database at all (beyond that an unknown key is refused without asking): a flood of bad keys can neither
grow memory nor hammer the database.

A refresh that ran while the admin API changed a key is dropped (the next one applies), so it never
puts back what a PATCH replaced; a revoked hash is remembered for good (a revocation is never undone),
so no refresh or lookup begun before it can bring the key back. Once any key has been made, the
gateway stays keyed, even with every key revoked: revoking the last key must not open the API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from cortex_gateway.reread import Rereads
from cortex_gateway.state_db import ApiKey, StateDB, StateError

log = logging.getLogger("cortex.gateway.keys")
REFRESH_S = 5.0
MISSING_TTL_S = 5.0
MISSING_MAX = 10_000
LOOKUPS_PER_S = 20.0


class KeyCache:
    def __init__(self, db: StateDB | None, static: dict[str, ApiKey], *, clock: Callable[[], float] = time.monotonic):
        self.db = db
        self.static = static  # the config file's keys by hash: fixed for the process's life
        self.known: dict[str, ApiKey] = {}  # the database's active keys by hash
        self._missing: OrderedDict[str, float] = OrderedDict()  # unknown hash -> when to forget it
        self._revoked: set[str] = set()
        self._ever = False  # a key was ever made in the database, revoked or not
        self._lookups: dict[str, asyncio.Future] = {}
        self._changes = 0  # bumped by every change through this gateway: a refresh begun before one is stale
        self._clock = clock
        self._allowance, self._allowance_at = LOOKUPS_PER_S, clock()
        self.rereads = Rereads(self._refresh_logged, "the keys", log)  # on another gateway's notice
        if db is not None:
            db.on_change("keys", self.rereads.told)

    @property
    def keyed(self) -> bool:
        """Whether the gateway requires keys: once any key exists anywhere, every request needs one. A
        revoked key counts: revoking the last key must not open the API to everyone."""
        return bool(self.static or self.known or self._ever)

    def cached(self, key_hash: str) -> ApiKey | None:
        """The key with this hash if it is in memory (the hot path: no I/O)."""
        return self.static.get(key_hash) or self.known.get(key_hash)

    async def lookup(self, key_hash: str) -> ApiKey | None:
        """A hash not in memory: asked of the database at most once per MISSING_TTL_S (and within the
        lookup rate), None if it is no active key. StateError if the database cannot answer."""
        if self.db is None or key_hash in self._revoked or self._still_missing(key_hash):
            return None
        pending = self._lookups.get(key_hash)
        if pending is None:
            if not self._may_look_up():
                return None
            pending = self._lookups[key_hash] = asyncio.ensure_future(self._fetch(key_hash))
            pending.add_done_callback(lambda _f: self._lookups.pop(key_hash, None))
        return await asyncio.shield(pending)  # one caller leaving does not cancel the others' query

    async def _fetch(self, key_hash: str) -> ApiKey | None:
        found = await self.db.get_key_by_hash(key_hash)
        if found is None or found.key_hash in self._revoked:
            self._remember_missing(key_hash)
            return None
        current = self.known.get(key_hash)
        if current is None or current.updated_at < found.updated_at:
            self.known[key_hash] = found
        return self.known[key_hash]

    def _still_missing(self, key_hash: str) -> bool:
        until = self._missing.get(key_hash)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._missing[key_hash]
        return False

    def _remember_missing(self, key_hash: str) -> None:
        self._missing[key_hash] = self._clock() + MISSING_TTL_S
        self._missing.move_to_end(key_hash)
        while len(self._missing) > MISSING_MAX:
            self._missing.popitem(last=False)

    def _may_look_up(self) -> bool:
        """A token bucket of LOOKUPS_PER_S: the database hears of unknown keys at that rate at most."""
        now = self._clock()
        self._allowance = min(LOOKUPS_PER_S, self._allowance + (now - self._allowance_at) * LOOKUPS_PER_S)
        self._allowance_at = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    # -- changes through this gateway's admin API --------------------------------------------------
    def put(self, key: ApiKey) -> None:
        """A key made or changed here: in force for the next request."""
        self._changes += 1
        self._ever = True
        if key.active and key.key_hash not in self._revoked:
            self.known[key.key_hash] = key
            self._missing.pop(key.key_hash, None)

    def revoke(self, key: ApiKey) -> None:
        """A key revoked here: refused from the next request on."""
        self._changes += 1
        self._revoked.add(key.key_hash)
        self.known.pop(key.key_hash, None)

    # -- the background refresh ------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Read every key; False (nothing replaced) if a change through this gateway came meanwhile."""
        if self.db is None:
            return True
        try:
            await self.db.listen()  # (again, after the database dropped the listening connection)
        except StateError as exc:
            log.debug("not listening for key changes: %s", exc)
        before = self._changes
        keys = await self.db.list_keys(include_revoked=True)
        if before != self._changes:
            return False
        self._ever = self._ever or bool(keys)
        self._revoked.update(k.key_hash for k in keys if not k.active)
        self.known = {k.key_hash: k for k in keys if k.key_hash not in self._revoked}
        return True

    async def run(self, interval: float = REFRESH_S) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self._refresh_logged()
        finally:
            self.rereads.cancel()

    async def _refresh_logged(self) -> bool:
        try:
            return await self.refresh()
        except StateError as exc:  # keep serving the keys known; the next round tries again
            log.warning("cannot refresh the keys from the state database: %s", exc)
            return True


KEYS = web.AppKey("key_cache", KeyCache)
