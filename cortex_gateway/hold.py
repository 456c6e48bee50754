"""Requests held in the gateway while a replica of their model comes up.

A burst for a hot model reaches its first node long before a new replica is loaded. Sent there, the requests
beyond its slots queue on that node (the neuron queues beyond its slots), and a replica that comes up a
moment later gets only the requests sent after it: the ones queued stay behind the full node's slots. So a
request whose replica is already full to its slots plus `[scheduling] scale_out_queue`, while another replica
of the model is being loaded (`replicas.holds` decides, `cortex_gateway.scaler` asks), waits here instead,
holding no slot, until the node chosen for it has room again or no replica is coming any more, then is
placed by the normal choice: the new replica, once up, is the least busy. A streamed request gets the
dialect's keep-alives meanwhile, as it does during a cold load. The wait is bounded by
`[scheduling] max_wait_s`; past it the request goes where it was to go, and queues there as before.

Each wait ends on an event, never on a clock tick: a request of the model ending (a slot freed) or a replica
load of it ending, both signalled through `Holds.changed`, and the deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cortex_gateway.fleet import Node

log = logging.getLogger("cortex.gateway.replicas")


class Holds:
    """Per model: how many requests are held now, and the future their waits end on at the next change."""

    def __init__(self, max_wait_s: float):
        self.max_wait_s = max_wait_s
        self.counts: dict[str, int] = {}
        self._changes: dict[str, asyncio.Future] = {}

    def count(self, model: str) -> int:
        return self.counts.get(model, 0)

    def changed(self, model: str) -> None:
        """A held request of `model` may be placed now (a request of it ended, a load of it ended): each held
        one looks again. Without any held, a dictionary look-up."""
        change = self._changes.pop(model, None)
        if change is not None and not change.done():
            change.set_result(None)

    def next_change(self, model: str) -> asyncio.Future:
        """The future that the next `changed(model)` completes, shared by the model's held requests."""
        change = self._changes.get(model)
        if change is None:
            change = self._changes[model] = asyncio.get_running_loop().create_future()
        return change

    def enter(self, model: str) -> None:
        self.counts[model] = self.count(model) + 1

    def leave(self, model: str) -> None:
        left = self.count(model) - 1
        if left > 0:
            self.counts[model] = left
        else:
            self.counts.pop(model, None)
            self._changes.pop(model, None)


class Hold:
    """One request held: `placed` waits and returns the node to send it to. `recheck(node)` says whether it
    must still wait for the node chosen now (the scaler's decision, which may add a replica meanwhile)."""

    def __init__(self, holds: Holds, model: str, recheck: Callable[[Node], bool]):
        self.holds, self.model, self.recheck = holds, model, recheck

    async def placed(self, choose: Callable[[], Node | None],
                     keepalive: Callable[[asyncio.Future], Awaitable[None]] | None = None) -> Node | None:
        """Wait (with `keepalive` for a stream) until the node `choose` picks has room, no replica is coming
        or max_wait_s has passed, then return that node; None when no node serves the model any more (the
        caller then places it as a request for a model loaded nowhere)."""
        loop, holds = asyncio.get_running_loop(), self.holds
        deadline = loop.time() + holds.max_wait_s
        if not holds.count(self.model):
            log.info("requests for %s wait in the gateway while a replica of it loads", self.model)
        holds.enter(self.model)
        waiting = None
        try:
            while True:
                # Taken before anything can change (no await since the last check), so no change is missed.
                waiting = _change_or(holds.next_change(self.model), deadline)
                await (keepalive or _quietly)(waiting)
                node = choose()
                if node is None or loop.time() >= deadline or not self.recheck(node):
                    log.debug("held request for %s placed on %s", self.model, node.name if node else None)
                    return node
        finally:
            if waiting is not None:
                waiting.cancel()  # its deadline timer goes with it
            holds.leave(self.model)


def _change_or(change: asyncio.Future, deadline: float) -> asyncio.Future:
    """A future of this wait alone, done at `change` or at `deadline`: cancelling it (the client left) leaves
    the shared `change` to the others."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def end(_=None) -> None:
        if not done.done():
            done.set_result(None)

    change.add_done_callback(end)
    timer = loop.call_at(deadline, end)

    def clean(_) -> None:
        timer.cancel()
        change.remove_done_callback(end)

    done.add_done_callback(clean)
    return done


async def _quietly(waiting: asyncio.Future) -> None:
    """A request that does not stream waits with nothing sent (asyncio.wait: no cancel of `waiting` here)."""
    await asyncio.wait({waiting})
