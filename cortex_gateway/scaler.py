"""Replicas carried out: the decisions of `cortex_gateway.replicas` turned into loads and unloads, a round at a
time, from a task the app starts beside the poller (only when some model is allowed more than one replica or
keeps a floor).

A round restores floors, adds a replica where the queue is deep and unloads idle extras. Rounds come every
`interval` seconds, and at once when a request is placed on a replica whose queue already reaches the
threshold (`Lifecycle.on_demand`: a dictionary lookup and a comparison on the request's path, nothing
parsed), so a burst gets its replica without waiting out the interval. A replica's load runs in the
background, one per model at a time; the request that asked for it is served where it was placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cortex_gateway.fleet import Node
from cortex_gateway.keep_alive import first_seen, idle_from
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.replicas import (
    Bounds,
    Placement,
    ReplicaLoad,
    ReplicaUnload,
    restore_min,
    scale_in,
    scale_outs,
    waiting_on,
)
from cortex_gateway.router import NodeView
from neuron.shared.client import NeuronError

log = logging.getLogger("cortex.gateway.replicas")
MIN_WAKE_S = 0.25
EVENTS = {"queue": "scale_out", "min_replicas": "restore"}  # a load's fleet event, by its reason


def slots_of(node: Node, model: str) -> int:
    """The model's decoding slots on the node: the batch's, as /health reports them, else the load's own
    max_in_flight; 0 when neither is known (then only the node's queue counts as waiting)."""
    upstream = node.upstream_id(model)
    load = node.health.load_of(upstream)
    if load is not None and load.slots:
        return load.slots
    info = node.models.get(model)
    return int((info.spec or {}).get("max_in_flight") or 0) if info is not None else 0


def waiting_at(lifecycle: Lifecycle, node: Node, model: str, extra: int = 0) -> int:
    """Requests for `model` waiting for a slot on `node`: the gateway's exact count against the slots, or the
    node's last polled queue (which sees other clients too), whichever is more."""
    load = node.health.load_of(node.upstream_id(model))
    in_flight = lifecycle.fleet.usage_of(node.name, model).in_flight + extra
    return waiting_on(in_flight, slots_of(node, model), load.queue_depth if load else 0)


class Replicas:
    """Carries out scale out, restore and scale in against the fleet; `now` is injectable for tests."""

    def __init__(self, lifecycle: Lifecycle, now: Callable[[], float] = time.time):
        self.lifecycle = lifecycle
        self.now = now
        scheduling, models = lifecycle.config.scheduling, lifecycle.config.models
        self.per_replica, self.idle_s = scheduling.scale_out_queue, scheduling.replica_idle_s
        self.bounds = {m: Bounds(p.min_replicas, p.max_replicas) for m, p in models.items()
                       if p.max_replicas > 1 or p.min_replicas > 0}
        self.seen: dict[tuple[str, str], float] = {}
        self.loads: dict[str, asyncio.Task] = {}  # model -> its replica load under way: one at a time
        self.wake = asyncio.Event()
        lifecycle.on_demand = self.on_demand

    @property
    def interval(self) -> float | None:
        """Seconds between rounds: the poll interval (the queues' figures are no fresher), and often enough to
        scale in within 1.25 times replica_idle_s; None when no model has replicas to manage."""
        if not self.bounds:
            return None
        return max(min(self.lifecycle.config.poll_interval_s, self.idle_s / 4), MIN_WAKE_S)

    def on_demand(self, model: str, node: Node) -> None:
        """A request is being placed on `node`: wake a round when that replica's queue reaches the threshold."""
        bounds = self.bounds.get(model)
        if bounds is not None and bounds.max > 1 and model not in self.loads \
                and waiting_at(self.lifecycle, node, model, extra=1) >= self.per_replica:
            self.wake.set()

    def placement(self) -> Placement:
        lc, models = self.lifecycle, self.lifecycle.config.models
        return Placement(lc.config.strategy, lc.pins, lc.priorities(),
                         {m: list(p.pinned_on) for m, p in models.items()},
                         frozenset(m for m, p in models.items() if p.path or p.source))

    def waiting(self) -> dict[str, dict[str, int]]:
        """Per managed model, per node serving it, its requests waiting for a slot."""
        nodes = [n for n in self.lifecycle.fleet.nodes.values() if n.accepting]
        return {m: {n.name: waiting_at(self.lifecycle, n, m) for n in nodes if n.has_loaded(m)}
                for m, b in self.bounds.items() if b.max > 1}

    def pending(self) -> frozenset[str]:
        """Models with a load under way by the gateway: a replica's, or a request's cold load."""
        return frozenset(self.loads) | frozenset(self.lifecycle.loads_pending())

    def decide(self, snapshot: list[NodeView]) -> tuple[list[ReplicaLoad], list[ReplicaUnload]]:
        pending, placement = self.pending(), self.placement()
        loads = restore_min(snapshot, self.bounds, placement, pending)
        pending |= {d.model for d in loads}
        loads += scale_outs(snapshot, self.waiting(), self.bounds, self.per_replica, placement, pending)
        unloads = scale_in(idle_from(snapshot, self.seen), self.bounds, self.lifecycle.pins, self.idle_s,
                           self.now())
        return loads, unloads

    async def round(self) -> None:
        """Start the loads due (in the background) and carry out the unloads due. An unload is decided again
        on a fresh snapshot just before it is done: the ones before it awaited, and requests may have come."""
        snapshot = self.lifecycle.snapshot()
        self.seen = first_seen(snapshot, self.seen, self.now())
        loads, unloads = self.decide(snapshot)
        for decision in loads:
            self.loads[decision.model] = asyncio.create_task(self._load(decision))
        for decision in unloads:
            again = scale_in(idle_from(self.lifecycle.snapshot(), self.seen), self.bounds, self.lifecycle.pins,
                             self.idle_s, self.now())
            if any((d.model, d.node) == (decision.model, decision.node) for d in again):
                await self._unload(decision)

    async def _load(self, decision: ReplicaLoad) -> None:
        lifecycle = self.lifecycle
        node = lifecycle.fleet.nodes[decision.node]
        try:
            await lifecycle.load(node, decision.model)
        except NeuronError as err:
            log.warning("replica of %s on %s not loaded (a later round tries again): %s", decision.model,
                        node.name, err.message)
            return
        finally:
            self.loads.pop(decision.model, None)
        lifecycle.metrics.scale_events.labels(decision.model, "out", decision.reason).inc()
        lifecycle.fleet.event(EVENTS[decision.reason], node=node.name, model=decision.model, reason=decision.reason,
                              waiting=decision.waiting)

    async def _unload(self, decision: ReplicaUnload) -> None:
        lifecycle = self.lifecycle
        node = lifecycle.fleet.nodes[decision.node]
        if not await lifecycle.unload_if_idle(node, decision.model, "scale-in"):
            return
        lifecycle.metrics.scale_events.labels(decision.model, "in", "idle").inc()
        lifecycle.fleet.event("scale_in", node=node.name, model=decision.model, reason="idle",
                              idle_s=round(decision.idle_s, 1))

    async def run(self, interval: float) -> None:
        """A round at once (the floors pre-warmed), then every `interval` seconds or when woken, until
        cancelled; a round that fails is logged and the next one runs. Loads under way are cancelled with it."""
        try:
            while True:
                try:
                    await self.round()
                except Exception:  # noqa: BLE001 - the rounds must outlive any one bad answer
                    log.exception("replica round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), interval)
                self.wake.clear()
        finally:
            for task in list(self.loads.values()):
                task.cancel()
