"""Keep-alive: a model idle on a node for its `keep_alive_s` is unloaded from that node; pinned models never.

`idle_unloads` decides from a fleet snapshot, with no I/O, as the router and evictor do; `KeepAlive`
carries its decisions out, a round at a time, from a task the app starts beside the poller.

Idle is measured from the gateway's own last use of the model on that node (`Fleet.usage_of(...)`,
exact, unlike a polled figure) and needs none of its requests in flight there. A model the gateway
never used (loaded before it started, or behind its back) counts from when the gateway first saw it
loaded, not from 1970. A model is not unloaded below its `min_replicas` (cortex_gateway.replicas), which
would load it again at the next round. Requests from elsewhere (another gateway, a direct client) the
gateway cannot see: the node's `if_idle` refuses to unload a model busy with them, and the next round asks again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cortex_gateway.fleet import every
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.replicas import above_floor
from cortex_gateway.router import NodeView

log = logging.getLogger("cortex.gateway.keep_alive")
Seen = dict[tuple[str, str], float]  # (node, model) -> when the gateway first saw it loaded there
# A round every quarter of the shortest keep-alive: a model is unloaded within 1.25 times its keep-alive.
WAKES_PER_KEEP_ALIVE = 4
MIN_WAKE_S = 0.25  # however short a keep-alive, the rounds (a snapshot each, no I/O when nothing is due) stay rare


@dataclass(frozen=True)
class IdleUnload:
    """One decision: unload `model` from `node`, idle for `idle_s`."""

    node: str
    model: str
    idle_s: float


def keep_alive_for(model: str, keep_alive: dict[str, float | None], default: float | None) -> float:
    """The model's own keep-alive, else the default; 0 means never unloaded for idleness."""
    own = keep_alive.get(model)
    return (default or 0.0) if own is None else own


def idle_unloads(snapshot: list[NodeView], keep_alive: dict[str, float | None], default: float | None,
                 pinned: dict[str, set[str]], now: float) -> list[IdleUnload]:
    """Every loaded model, on a healthy node, idle past its keep-alive: not pinned there, nothing in flight."""
    due = []
    for view in snapshot:
        if not view.healthy:
            continue
        for model in sorted(view.loaded):
            limit, idle = keep_alive_for(model, keep_alive, default), now - view.last_used.get(model, 0.0)
            if limit > 0 and idle >= limit and not view.busy.get(model, 0) and view.name not in pinned.get(model, ()):
                due.append(IdleUnload(view.name, model, idle))
    return due


def wake_interval(keep_alive: dict[str, float | None], default: float | None) -> float | None:
    """Seconds between rounds, from the shortest keep-alive; None when no model has one (no rounds at all)."""
    limits = [v for v in (default, *keep_alive.values()) if v]
    return max(min(limits) / WAKES_PER_KEEP_ALIVE, MIN_WAKE_S) if limits else None


def first_seen(snapshot: list[NodeView], seen: Seen, now: float) -> Seen:
    """When the gateway first saw each (node, model) loaded: kept from `seen`, `now` for the new ones. Those
    no longer loaded are dropped, so a later load there counts afresh."""
    return {(v.name, m): seen.get((v.name, m), now) for v in snapshot for m in v.loaded}


def idle_from(snapshot: list[NodeView], seen: Seen) -> list[NodeView]:
    """The snapshot with each model's last use no earlier than when the gateway first saw it loaded."""
    return [replace(v, last_used={m: max(v.last_used.get(m, 0.0), seen.get((v.name, m), 0.0)) for m in v.loaded})
            for v in snapshot]


class KeepAlive:
    """Carries out `idle_unloads` against the fleet; `now` is injectable so tests set the clock."""

    def __init__(self, lifecycle: Lifecycle, now: Callable[[], float] = time.time):
        self.lifecycle = lifecycle
        self.now = now
        scheduling, models = lifecycle.config.scheduling, lifecycle.config.models
        self.default = scheduling.keep_alive_s
        self.keep_alive = {m: p.keep_alive_s for m, p in models.items()}
        self.floors = {m: p.min_replicas for m, p in models.items() if p.min_replicas}  # never below these
        self.seen: Seen = {}

    @property
    def interval(self) -> float | None:
        return wake_interval(self.keep_alive, self.default)

    def due(self, snapshot: list[NodeView]) -> list[IdleUnload]:
        now = self.now()
        due = idle_unloads(idle_from(snapshot, self.seen), self.keep_alive, self.default, self.lifecycle.pins, now)
        return above_floor(due, snapshot, self.floors)

    async def round(self) -> None:
        """Unload what is due. Each decision is taken again on a fresh snapshot just before it is carried
        out: the unloads before it awaited, and a request may have started meanwhile."""
        snapshot = self.lifecycle.snapshot()
        self.seen = first_seen(snapshot, self.seen, self.now())
        for decision in self.due(snapshot):
            # The whole fleet again, not the one node: a floor counts the model's replicas everywhere.
            again = self.due(self.lifecycle.snapshot())
            if any((d.node, d.model) == (decision.node, decision.model) for d in again):
                await self._unload(decision)

    async def _unload(self, decision: IdleUnload) -> None:
        lifecycle = self.lifecycle
        node = lifecycle.fleet.nodes[decision.node]
        if not await lifecycle.unload_if_idle(node, decision.model, "keep-alive unload"):
            return
        lifecycle.metrics.unloads.labels(decision.model, node.name, "keep_alive").inc()
        lifecycle.fleet.event("keep_alive_unload", node=node.name, model=decision.model,
                              idle_s=round(decision.idle_s, 1))

    async def run(self, interval: float) -> None:
        """A round every `interval` seconds until cancelled; one that fails is logged and the next one runs."""
        await every(interval, self.round, "keep-alive round")
