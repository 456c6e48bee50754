"""The gateway's memory of responses: what `previous_response_id`, GET and DELETE read.

Bounded four ways: at most `max_entries` responses and at most `max_bytes` in all (the least
recently used go first, until both hold), none over `max_response_bytes` (such a response is not
kept), and none older than `ttl_s` (an age since the response was stored, not since it was last
read, so a conversation cannot keep data alive forever). A response's size is the JSON of the
response and of the whole conversation it carries: what a follow-up reads, counted in full even
where chained responses share their earlier items, so the bound is an upper bound on what is held.
On SQLite it lives in the gateway's process: a restart forgets every response. On PostgreSQL (`attach`)
every response is also written to the state database's `responses` table, which keeps each owner's
(key's) newest `max_entries` none older than `ttl_s`, and a lookup (`load`) reads it there first, so a
response made through one gateway is found, and one deleted is gone, through every other. The write is
started as the answer is made and the route awaits it (`flushed`) before the answer's last bytes (a
stream's end) go, so a client holding a whole answer can follow it up through any gateway. The memory
side is pure: the clock is given, so the eviction rules are tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from cortex_gateway.state_db import StateDB, StateError
from neuron.shared.errors import ApiError

log = logging.getLogger("cortex.gateway.responses")

MIB = 2**20


@dataclass
class StoredResponse:
    """One response and the conversation that led to it."""

    response: dict  # the Response object, as GET returns it
    input_items: list[dict]  # this request's own input items, with ids (GET .../input_items)
    # Every item a follow-up's model must see: the previous responses' conversation, this input and
    # this output, in order (instructions excluded: OpenAI does not carry them over either).
    conversation: list[dict]
    owner: str | None = None  # the API key that made it (None without keys): only that key may read it
    stored_at: float = 0.0
    size: int = 0  # bytes, as counted against the store's bounds (`ResponseStore.size_of`)


class ResponseStore:
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int = 256 * MIB, max_response_bytes: int = 16 * MIB):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_response_bytes = max_response_bytes
        self.bytes = 0  # the sizes of the responses held
        self._by_use: OrderedDict[str, StoredResponse] = OrderedDict()  # least recently used first
        self._by_age: OrderedDict[str, float] = OrderedDict()  # oldest first: expiry order, as ttl is one
        self.db: StateDB | None = None  # PostgreSQL: the responses shared by every gateway (`attach`)
        self._writes: set[asyncio.Task] = set()

    def attach(self, db: StateDB) -> None:
        """Share the responses through `db` (a PostgreSQL state database)."""
        self.db = db

    def __len__(self) -> int:
        self._expire()
        return len(self._by_use)

    @staticmethod
    def size_of(entry: StoredResponse) -> int:
        """The entry's JSON bytes (its input items are part of its conversation, so counted there)."""
        return len(orjson.dumps(entry.response)) + len(orjson.dumps(entry.conversation))

    def put(self, response_id: str, entry: StoredResponse) -> bool:
        """Keep `entry`, evicting the least recently used to make room; False when it is not kept
        (a store of size 0, or a response over `max_response_bytes`)."""
        self._expire()
        self._forget(response_id)
        entry.size = self.size_of(entry)
        if self.max_entries <= 0 or entry.size > self.max_response_bytes:
            return False
        self._hold(response_id, entry, self.clock())
        if self.db is not None:
            body = orjson.dumps({"response": entry.response, "input_items": entry.input_items,
                                 "conversation": entry.conversation}).decode()
            self._write(self.db.put_response(response_id, entry.owner or "", entry.size, body, self.max_entries,
                                             self.ttl_s))
        return True

    def _hold(self, response_id: str, entry: StoredResponse, stored_at: float) -> None:
        entry.stored_at = stored_at
        self._by_use[response_id] = entry
        self._by_age[response_id] = entry.stored_at
        self.bytes += entry.size
        while len(self._by_use) > self.max_entries or self.bytes > self.max_bytes:
            self._forget(next(iter(self._by_use)))

    async def load(self, response_id: str) -> None:
        """Before a `get` on PostgreSQL: the database's word on the response (made or deleted through any
        gateway) into memory. A 503 if the database cannot answer: not found would be a lie."""
        if self.db is None:
            return
        try:
            row = await self.db.get_response(response_id, self.ttl_s)
        except StateError as exc:
            raise ApiError(503, "api_error", f"the state database is unreachable, so the stored response "
                           f"{response_id!r} cannot be read: {exc}; retry shortly", code="state_unavailable",
                           retry_after=5) from None
        self._forget(response_id)
        if row is None:
            return
        owner, stored_at, size, body = row
        data = orjson.loads(body)
        entry = StoredResponse(data["response"], data["input_items"], data["conversation"], owner or None, size=size)
        self._hold(response_id, entry, self.clock() - max(0.0, self.db.clock() - stored_at))

    async def remove(self, response_id: str) -> bool:
        """DELETE: forgotten here and, on PostgreSQL, in the database before this returns (a 503 if it
        cannot be), so no gateway finds it after the client was told it is gone."""
        if self.db is not None:
            try:
                await self.db.delete_response(response_id)
            except StateError as exc:
                raise ApiError(503, "api_error", f"the state database is unreachable, so the stored response "
                               f"{response_id!r} cannot be deleted: {exc}; retry shortly", code="state_unavailable",
                               retry_after=5) from None
        return self._forget(response_id)

    def _write(self, write) -> None:
        """A write to the database, run beside the request: a failure is logged (the response stays here)."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("stored response not shared through the state database: %s", exc)

    async def flushed(self) -> None:
        """The writes begun so far committed (or failed): awaited before an answer's last bytes go."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        """Wait for the writes still running (the app's end, before the database closes)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._by_use.get(response_id)
        if entry is not None:
            self._by_use.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        """Forget the response, here and (PostgreSQL) in the database."""
        if self.db is not None:
            self._write(self.db.delete_response(response_id))
        return self._forget(response_id)

    def _forget(self, response_id: str) -> bool:
        entry = self._by_use.pop(response_id, None)
        if entry is None:
            return False
        del self._by_age[response_id]
        self.bytes -= entry.size
        return True

    def _expire(self) -> None:
        limit = self.clock() - self.ttl_s
        while self._by_age:
            response_id, stored_at = next(iter(self._by_age.items()))
            if stored_at > limit:
                return
            self._forget(response_id)
