"""The fleet's event log shared by every gateway on one PostgreSQL: loads, evictions, nodes up and down...

Each gateway keeps its own events in memory (`Fleet.events`, as on SQLite) and also appends them to the
state database's `events` table, in batches written beside the request path (an event never waits on
the database). `/admin/status` then shows the fleet's newest events from every gateway, each naming the
gateway it came from, with this gateway's not yet written at the end. The table keeps the newest
`state_db.shared.EVENTS_KEPT`. While the database cannot be reached, up to `BUFFER_MAX` events wait to be
written (the oldest are dropped beyond that) and the failure is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from cortex_gateway.fleet import Fleet
from cortex_gateway.state import FLEET, STATE_DB
from cortex_gateway.state_db import StateDB, StateError

log = logging.getLogger("cortex.gateway.shared_events")
BUFFER_MAX = 1000  # events waiting for the database, at most
PRUNE_EVERY = 100  # appends between two prunes of the table


class SharedEvents:
    def __init__(self, db: StateDB, fleet: Fleet):
        self.db = db
        self.fleet = fleet
        self.pending: list[dict] = []
        self._writing: asyncio.Task | None = None
        self._appended = 0
        self._unreachable = False

    def hook(self) -> None:
        """Every fleet event (those of the first poll too) is also written to the database; Fleet keeps its own
        as before, and knows nothing of the database (its `on_event`)."""
        for earlier in self.fleet.events:
            self.record(earlier)
        self.fleet.on_event = self.record

    def record(self, event: dict) -> None:
        self.pending.append({**event, "gateway": self.db.instance_id})
        del self.pending[:-BUFFER_MAX]
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        while self.pending:
            batch = list(self.pending)
            self._appended += len(batch)
            prune = self._appended >= PRUNE_EVERY
            try:
                await self.db.append_events(batch, prune=prune)
            except StateError as exc:
                if not self._unreachable:
                    log.warning("cannot write the fleet's events to the state database (kept here, written when "
                                "it answers again): %s", exc)
                self._unreachable = True
                return  # the next event, or the next round, tries again
            if self._unreachable:
                log.warning("the state database answers again: the fleet's events are written again")
            self._unreachable = False
            self._appended = 0 if prune else self._appended
            del self.pending[:len(batch)]

    async def recent(self, limit: int) -> list[dict]:
        """The newest `limit` events of every gateway, oldest first; this gateway's own alone if the database
        cannot answer."""
        try:
            stored = await self.db.recent_events(limit)
        except StateError:
            return list(self.fleet.events)[-limit:]
        return (stored + list(self.pending))[-limit:]

    async def close(self) -> None:
        """Write what waits (once), then stop."""
        if self._writing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writing
        if self.pending:
            await self._write()


SHARED_EVENTS = web.AppKey("shared_events", SharedEvents)


def shared_events_ctx():
    """The app's cleanup_ctx entry, after the fleet's: on PostgreSQL, the fleet's events shared."""
    async def ctx(app: web.Application):
        db = app[STATE_DB]
        if db.dialect != "postgresql":  # one gateway: its events are the fleet's
            yield
            return
        shared = app[SHARED_EVENTS] = SharedEvents(db, app[FLEET])
        shared.hook()
        yield
        await shared.close()

    return ctx
