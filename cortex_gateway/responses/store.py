"""The gateway's memory of responses: what `previous_response_id`, GET and DELETE read.

Bounded twice: at most `max_entries` responses (the least recently used goes first)
and none older than `ttl_s` (an age since the response was stored, not since it was
last read, so a conversation cannot keep data alive forever). It lives in the
gateway's process: a restart forgets every response, and with several gateways a
client must come back to the one that answered. Pure: the clock is given, so the
eviction rules are tested without waiting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


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


class ResponseStore:
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_use: OrderedDict[str, StoredResponse] = OrderedDict()  # least recently used first
        self._by_age: OrderedDict[str, float] = OrderedDict()  # oldest first: expiry order, as ttl is one

    def __len__(self) -> int:
        self._expire()
        return len(self._by_use)

    def put(self, response_id: str, entry: StoredResponse) -> None:
        self._expire()
        if self.max_entries <= 0:
            return
        self.delete(response_id)
        entry.stored_at = self.clock()
        self._by_use[response_id] = entry
        self._by_age[response_id] = entry.stored_at
        while len(self._by_use) > self.max_entries:
            oldest, _ = self._by_use.popitem(last=False)
            del self._by_age[oldest]

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._by_use.get(response_id)
        if entry is not None:
            self._by_use.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        if self._by_use.pop(response_id, None) is None:
            return False
        del self._by_age[response_id]
        return True

    def _expire(self) -> None:
        limit = self.clock() - self.ttl_s
        while self._by_age:
            response_id, stored_at = next(iter(self._by_age.items()))
            if stored_at > limit:
                return
            del self._by_age[response_id]
            del self._by_use[response_id]
