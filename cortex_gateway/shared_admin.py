"""Pins and drains made through any gateway's admin API, shared by every gateway on the state database.

The admin API writes a pin, an unpin, a drain or an undrain to the database (`pins`, `drains`) and
applies it here at once; every other gateway reads the tables back on each of its rounds (every poll
interval) and, on PostgreSQL, at once when the writer's NOTIFY arrives. What the database says is laid
over the models file's `pinned_on` (read at start): a pin adds a node, an unpin removes one, so an
unpin made through any gateway lifts a pin of the file too. A node's `draining` is the database's word
for it (no row: not drained), so a drain also outlives a restart.

A round that cannot read the database keeps what it applied last and logs that once; the first round
that reads again logs the recovery (docs/state.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from cortex_gateway.fleet import Fleet, every
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.reread import Rereads
from cortex_gateway.state import FLEET, LIFECYCLE, STATE_DB
from cortex_gateway.state_db import StateDB, StateError
from cortex_gateway.state_db.shared import AdminState

log = logging.getLogger("cortex.gateway.shared_admin")


def effective_pins(configured: dict[str, set[str]], state: AdminState) -> dict[str, set[str]]:
    """The models file's pins with the database's pins and unpins laid over them. Pure."""
    pins = {model: set(nodes) for model, nodes in configured.items()}
    for (model, node), pinned in sorted(state.pins.items()):
        (pins.setdefault(model, set()).add if pinned else pins.get(model, set()).discard)(node)
    return pins


class SharedAdmin:
    def __init__(self, db: StateDB, lifecycle: Lifecycle, fleet: Fleet):
        self.db = db
        self.lifecycle = lifecycle
        self.fleet = fleet
        self.configured = {model: set(nodes) for model, nodes in lifecycle.pins.items()}  # the models file's
        self.state = AdminState({}, {})
        self._unreachable = False  # the last round could not read the database (logged once)
        self._rereads = Rereads(self.refresh, "the pins or drains", log)  # on another gateway's notice
        self._changes = 0  # bumped by each change through this gateway: a read begun before one is stale
        db.on_change("admin", self._rereads.told)

    # -- changes through this gateway's admin API (StateError if the database cannot take them) ------
    async def set_pin(self, node: str, model: str, pinned: bool) -> None:
        await self.db.set_pin(model, node, pinned)
        self._changes += 1
        self.apply(AdminState({**self.state.pins, (model, node): pinned}, self.state.drains))

    async def set_drain(self, node: str, draining: bool) -> None:
        await self.db.set_drain(node, draining)
        self._changes += 1
        self.apply(AdminState(self.state.pins, {**self.state.drains, node: draining}))

    # -- applying what the database says -------------------------------------------------------------
    def apply(self, state: AdminState) -> None:
        """Make `lifecycle.pins` and each node's `draining` what `state` says (in place: others hold them)."""
        self.state = state
        pins = effective_pins(self.configured, state)
        self.lifecycle.pins.clear()
        self.lifecycle.pins.update(pins)
        for node in self.fleet.nodes.values():
            node.draining = state.drains.get(node.name, False)

    async def refresh(self) -> None:
        """Read the tables and apply them; on failure keep what was applied, saying so once."""
        before = self._changes
        try:
            await self.db.listen()  # again, if the database dropped the listening connection
            state = await self.db.admin_state()
        except StateError as exc:
            if not self._unreachable:
                log.warning("cannot read pins and drains from the state database (keeping those applied): %s", exc)
            self._unreachable = True
            return
        if self._unreachable:
            log.warning("the state database answers again: pins and drains read afresh")
        self._unreachable = False
        if before == self._changes:  # else a change here came meanwhile: the next read has it
            self.apply(state)

    async def close(self) -> None:
        await self._rereads.close()


SHARED_ADMIN = web.AppKey("shared_admin", SharedAdmin)


def shared_admin_ctx(interval: float):
    """The app's cleanup_ctx entry, after the fleet's: the stored pins and drains applied before serving,
    then read again every `interval` (the poll interval) and on each notification."""
    async def ctx(app: web.Application):
        shared = app[SHARED_ADMIN] = SharedAdmin(app[STATE_DB], app[LIFECYCLE], app[FLEET])
        await shared.refresh()
        task = asyncio.create_task(every(interval, shared.refresh, "reading pins and drains"))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await shared.close()

    return ctx
