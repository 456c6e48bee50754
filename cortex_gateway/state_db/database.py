"""`StateDB`: the one access layer over the gateway's state, whichever database holds it.

As datasette's `Database`, one object owns the connections (a driver: SQLite's worker threads, or an
asyncpg pool) and every method is a coroutine that runs its queries off the event loop, so the request
path never blocks on the database. Each method is one transaction of one script (`keys`, `usage`),
atomic in both dialects. Callers cache what they may (a key's settings); what must be exact (a budget's
reservation) comes here per request.

A write the request path cannot afford to lose runs to its end even if the awaiting task is cancelled
(a client that leaves cancels its handler): a settle still commits, and a reservation made for a task
that was cancelled meanwhile is released rather than held until the next start. `close` waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cortex_gateway.state_db import keys, responses, shared, tpm, usage
from cortex_gateway.state_db.migrations import migrate
from cortex_gateway.state_db.records import ApiKey, KeySettings, Released, Reservation, StateError, UsageRow
from cortex_gateway.state_db.script import Driver, Script, T
from cortex_gateway.state_db.spool import SpooledUsage, UsageSpool
from cortex_gateway.state_db.sqlite import SQLiteDriver
from cortex_gateway.state_db.url import StateURL, parse_state_url

log = logging.getLogger("cortex.gateway.state_db")
CHANNEL = "cortex_state"  # PostgreSQL's NOTIFY channel: "<topic> <instance id of the gateway that changed it>"


def driver_for(url: StateURL) -> Driver:
    if url.dialect == "sqlite":
        return SQLiteDriver(url.path)
    from cortex_gateway.state_db.postgres import PostgresDriver  # asyncpg only where PostgreSQL is used

    return PostgresDriver(url.dsn)


class StateDB:
    """The gateway's state. Make one with `await StateDB.open(...)`; `await db.close()` when done."""

    def __init__(self, driver: Driver, instance_id: str, *, clock: Callable[[], float] = time.time,
                 spool: UsageSpool | None = None):
        self._driver = driver
        self.spool = spool  # where record_usage puts what the database cannot take (None: nowhere, it raises)
        self.instance_id = instance_id  # this gateway's name on the reservations it holds
        self.clock = clock
        self._pending: set[asyncio.Future] = set()
        self._subscribers: dict[str, list[Callable[[], None]]] = {}

    @classmethod
    async def open(cls, url: str | None, state_dir: Path | None, instance_id: str, *,
                   clock: Callable[[], float] = time.time, spool: UsageSpool | None = None) -> StateDB:
        """Connect to the database `url` names (None: SQLite in `state_dir`) and migrate it to the latest
        schema. Raises StateError (one line: what and where; `transient` if asking again may do) if it
        cannot be reached or migrated."""
        try:
            parsed = parse_state_url(url, state_dir)
        except ValueError as exc:
            raise StateError(f"[state] url: {exc}") from None
        db = cls(driver_for(parsed), instance_id, clock=clock, spool=spool)
        await db._driver.open()
        try:
            applied = await db.migrate()
        except BaseException:
            await db._driver.close()
            raise
        if applied:
            log.info("state database %s migrated to schema version %d", db.where, applied[-1])
        return db

    @property
    def dialect(self) -> str:
        return self._driver.dialect  # "sqlite" or "postgresql"

    @property
    def where(self) -> str:
        """The file, or the URL without its password: for logs and errors."""
        return self._driver.where

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied (the versions applied; [] when up to date)."""
        return await self._driver.write(lambda: migrate(self.dialect, self.clock()))

    async def close(self) -> None:
        """Wait for the writes still running for cancelled callers, then close the connections."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._driver.close()

    # -- notifications: what another gateway changed, told at once on PostgreSQL -----------------
    def on_change(self, topic: str, callback: Callable[[], None]) -> None:
        """`callback()` when another gateway tells of a change to `topic` ("keys", "admin"), once listening."""
        self._subscribers.setdefault(topic, []).append(callback)

    async def listen(self) -> bool:
        """Listen for other gateways' changes (PostgreSQL; False on SQLite). Called again on each round, it
        listens again after the database dropped the connection; StateError while it cannot."""
        return await self._driver.listen(CHANNEL, self._dispatch)

    async def changed(self, topic: str) -> None:
        """Tell the other gateways that `topic` changed. Best effort: one that misses it reads on its round."""
        try:
            await self._driver.notify(CHANNEL, f"{topic} {self.instance_id}")
        except StateError as exc:
            log.info("state database: cannot tell the other gateways of a change to %s: %s", topic, exc)

    def _dispatch(self, payload: str) -> None:
        topic, _, sender = payload.partition(" ")
        if sender == self.instance_id:
            return  # this gateway's own change, applied already
        for callback in self._subscribers.get(topic, ()):
            callback()

    # -- keys ------------------------------------------------------------------------------------
    async def create_key(self, name: str, key_hash: str, settings: KeySettings = KeySettings()) -> ApiKey:
        """Store a new key by its hash (`records.hash_key`); DuplicateKeyName if the name is taken."""
        key = await self._driver.write(lambda: keys.create_key(name, key_hash, settings, self.clock()))
        await self.changed("keys")
        return key

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The active key with this hash; None for an unknown or revoked one."""
        return await self._driver.read(lambda: keys.get_key_by_hash(key_hash))

    async def get_key(self, name: str) -> ApiKey | None:
        """The key of this name, revoked or not."""
        return await self._driver.read(lambda: keys.get_key(name))

    async def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        return await self._driver.read(lambda: keys.list_keys(include_revoked))

    async def update_key(self, name: str, changes: Mapping[str, Any]) -> ApiKey:
        """Change settings of an active key (names of `records.SETTINGS`; None clears a limit).
        KeyNotFound if there is no active key of that name; InvalidKeySetting naming a bad value."""
        key = await self._driver.write(lambda: keys.update_key(name, changes, self.clock()))
        await self.changed("keys")
        return key

    async def revoke_key(self, name: str) -> ApiKey:
        """Revoke an active key (its row and usage stay); KeyNotFound if there is no active key of that name."""
        key = await self._driver.write(lambda: keys.revoke_key(name, self.clock()))
        await self.changed("keys")
        return key

    # -- pins, drains and events (cortex_gateway.shared_admin) ------------------------------------
    async def set_pin(self, model: str, node: str, pinned: bool) -> None:
        await self._driver.write(lambda: shared.set_pin(model, node, pinned, self.clock()))
        await self.changed("admin")

    async def set_drain(self, node: str, draining: bool) -> None:
        await self._driver.write(lambda: shared.set_drain(node, draining, self.clock()))
        await self.changed("admin")

    async def admin_state(self) -> shared.AdminState:
        return await self._driver.read(shared.admin_state)

    async def append_events(self, events: list[dict], prune: bool = False) -> None:
        """Add this gateway's events (and, `prune`, drop all but the newest `shared.EVENTS_KEPT`)."""
        def script():
            yield from shared.append_events(self.instance_id, events)
            if prune:
                yield from shared.prune_events()
        await self._driver.write(script, durable=False)

    async def recent_events(self, limit: int) -> list[dict]:
        return await self._driver.read(lambda: shared.recent_events(limit))

    # -- stored responses (cortex_gateway.responses.store, on PostgreSQL) ---------------------------
    async def put_response(self, response_id: str, owner: str, size: int, body: str, max_entries: int,
                           ttl_s: float) -> None:
        """Store a response, and keep its owner to `max_entries` responses none older than `ttl_s`."""
        now = self.clock()
        await self._driver.write(lambda: responses.put(response_id, owner, now, size, body, max_entries, now - ttl_s))

    async def get_response(self, response_id: str, ttl_s: float) -> tuple[str, float, int, str] | None:
        return await self._driver.read(lambda: responses.get(response_id, self.clock() - ttl_s))

    async def delete_response(self, response_id: str) -> None:
        await self._driver.write(lambda: responses.delete(response_id))

    # -- budgets and usage -----------------------------------------------------------------------
    async def reserve(self, key: str, model: str, window: str, tokens: int, budget: int | None) -> Reservation | None:
        """Hold `tokens` of `key`'s budget in the window's period `window` (a label the caller chooses,
        such as "2026-12-01" for a day), for one request to `model`. None, holding nothing, unless
        settled + reserved + tokens <= budget for that key and window, whatever runs at once; `budget`
        None: no limit (the tokens are still held, so usage shows them)."""
        reservation = Reservation(uuid.uuid4().hex, key, model, window, tokens, self.instance_id, self.clock())
        # Not forced to the disk before it returns: kept if the gateway dies, made durable by the settle's commit
        # (a power cut before that loses the reservation with its unbilled request; the budget stays exact).
        return await self._shielded(lambda: usage.reserve(reservation, budget), on_cancelled=self._release_orphan,
                                    durable=False)

    async def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> bool:
        """Replace the reservation by the real usage (one more request), committed before this returns.
        False, changing nothing, if it was already settled or released: settling twice bills once."""
        return await self._shielded(lambda: usage.settle(reservation.id, prompt_tokens, completion_tokens))

    async def record_usage(self, key: str, model: str, window: str, prompt_tokens: int,
                           completion_tokens: int) -> StateError | None:
        """Bill one request that reserved nothing (a key without a budget): its usage in `window`, committed
        before this returns; one transaction where a reserve and a settle are two. None once committed; if
        the database cannot take it, its error, the usage being on the disk in the spool instead (replayed
        by `replay_spool`). StateError when neither holds it (no spool, or the spool cannot be written)."""
        entry = SpooledUsage.new(key, model, window, prompt_tokens, completion_tokens, self.clock())
        try:  # billed under the id it is spooled by, if it must be: a lost commit answer is not billed twice
            await self._shielded(lambda: usage.record(key, model, window, prompt_tokens, completion_tokens,
                                                      billed=(entry.id, entry.at)))
            return None
        except StateError as exc:
            return await self._spool_instead(exc, entry)

    async def settle_or_spool(self, reservation: Reservation, prompt_tokens: int,
                              completion_tokens: int) -> StateError | None:
        """`settle`, and if the database cannot take it, the settlement spooled as `record_usage` spools
        (replayed as a settle of the same reservation: a gateway's start replays before it releases what
        it held). None once committed (or settled already), else the database's error."""
        try:
            await self.settle(reservation, prompt_tokens, completion_tokens)
            return None
        except StateError as exc:
            r = reservation
            return await self._spool_instead(exc, SpooledUsage.new(r.key, r.model, r.window, prompt_tokens,
                                                                   completion_tokens, self.clock(), r.id))

    async def _spool_instead(self, failure: StateError, record: SpooledUsage) -> StateError:
        if self.spool is None:
            raise failure
        try:
            await self.spool.append(record)
        except OSError as exc:
            raise StateError(f"{failure}; and the usage spool {self.spool.path} cannot be written: "
                             f"{exc.strerror or exc}") from exc
        return failure

    async def replay_spool(self) -> int:
        """Bill what the spool holds (each request once, however often it is replayed); the requests billed.
        StateError if the database fails meanwhile (what is left stays for the next replay)."""
        if self.spool is None or not self.spool.pending():
            return 0
        try:
            return await self.spool.replay(self._bill_spooled)
        except OSError as exc:  # a person must fix it (permissions, a full disk): said once, not a traceback
            raise StateError(f"the usage spool {self.spool.path} cannot be read or moved aside: "
                             f"{exc.strerror or exc}; fix its permissions or the state dir's") from exc

    async def prune_billed(self, keep_s: float) -> int:
        """Forget the ids of usage billed more than `keep_s` ago (`usage.prune_marks`); how many."""
        return await self._driver.write(lambda: usage.prune_marks(self.clock() - keep_s))

    async def _bill_spooled(self, records: list[SpooledUsage]) -> int:
        return await self._driver.write(lambda: usage.record_spooled(records, self.clock()))

    async def release(self, reservation: Reservation) -> bool:
        """Give the reservation's tokens back unbilled (a request that never ran); False if already gone."""
        return await self._shielded(lambda: usage.release(reservation.id))

    async def release_stale(self, instance_id: str | None = None) -> Released:
        """Release every reservation `instance_id` holds (default: this gateway's own, at its start, when
        any it holds were left by a process that died); settled usage stays."""
        return await self._driver.write(lambda: usage.release_stale(instance_id or self.instance_id))

    async def usage(self, key: str | None = None) -> list[UsageRow]:
        """Usage per key, model and window (of one key, or all), with the tokens reserved and not settled."""
        return await self._driver.read(lambda: usage.usage(key))

    async def budget_used(self, key: str, window: str) -> tuple[int, int]:
        """(settled, reserved) tokens of `key` in `window`, over all models."""
        return await self._driver.read(lambda: usage.budget_used(key, window))

    # -- tokens per minute (state_db/tpm.py): exact across gateways ---------------------------------
    async def tpm_take(self, key: str, limit: int, tokens: int) -> tpm.BucketLevel:
        """Take `tokens` from `key`'s bucket of `limit` a minute if they are there, whatever runs at once.
        Not forced to the disk (a power cut loses a take, which the bucket would have refilled anyway); a take
        made for a caller cancelled meanwhile is given back."""
        now = self.clock()
        return await self._shielded(lambda: tpm.take(key, limit, tokens, now), durable=False,
                                    on_cancelled=lambda task: self._untake(task, key, limit, tokens))

    async def tpm_give_back(self, key: str, limit: int, tokens: int) -> float | None:
        """Return what a request took and did not use (negative: charge what it used beyond); the level after."""
        now = self.clock()
        return await self._shielded(lambda: tpm.give_back(key, limit, tokens, now), durable=False)

    async def tpm_level(self, key: str, limit: int) -> float:
        """`key`'s tokens now (for /admin/usage), changing nothing."""
        return await self._driver.read(lambda: tpm.level(key, limit, self.clock()))

    def _untake(self, task: asyncio.Future, key: str, limit: int, tokens: int) -> None:
        if _log_failure(task) and task.result().taken:
            self._track(asyncio.ensure_future(self.tpm_give_back(key, limit, tokens)))

    # -- writes that outlive a cancelled caller --------------------------------------------------
    async def _shielded(self, make: Callable[[], Script[T]], on_cancelled=None, durable: bool = True) -> T:
        task = asyncio.ensure_future(self._driver.write(make, durable))
        self._track(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(on_cancelled or _log_failure)
            raise

    def _track(self, task: asyncio.Future) -> None:
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it has it, and _log_failure speaks for who did not

    def _release_orphan(self, task: asyncio.Future) -> None:
        """A reservation made for a caller that was cancelled meanwhile: nobody will settle it, so release it."""
        if _log_failure(task) and task.result() is not None:
            self._track(asyncio.ensure_future(self.release(task.result())))


def _log_failure(task: asyncio.Future) -> bool:
    """Log the failure of a write whose caller had gone; True if it succeeded."""
    if task.cancelled():
        return False
    if (exc := task.exception()) is not None:
        log.error("state database: a write for a cancelled request failed: %s", exc)
        return False
    return True
