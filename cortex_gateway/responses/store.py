"""The gateway's memory of responses: what `previous_response_id`, GET and DELETE read.

Bounded four ways: at most `max_entries` responses and at most `max_bytes` in all (the least
recently used go first, until both hold), none over `max_response_bytes` (such a response is not
kept), and none older than `ttl_s` (an age since the response was stored, not since it was last
read, so a conversation cannot keep data alive forever). A response's size is the JSON of the
response and of the whole conversation it carries: what a follow-up reads, counted in full even
where chained responses share their earlier items, so the bound is an upper bound on what is held.
It lives in the gateway's process: a restart forgets every response, and with several gateways a
client must come back to the one that answered. Pure: the clock is given, so the eviction rules
are tested without waiting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

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
        self.delete(response_id)
        entry.size = self.size_of(entry)
        if self.max_entries <= 0 or entry.size > self.max_response_bytes:
            return False
        entry.stored_at = self.clock()
        self._by_use[response_id] = entry
        self._by_age[response_id] = entry.stored_at
        self.bytes += entry.size
        while len(self._by_use) > self.max_entries or self.bytes > self.max_bytes:
            self.delete(next(iter(self._by_use)))
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._by_use.get(response_id)
        if entry is not None:
            self._by_use.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
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
            self.delete(response_id)
