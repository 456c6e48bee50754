"""Replicas carried out: the decisions of `cortex_gateway.replicas` turned into loads, unloads and held
requests, from a task the app starts beside the poller (only when some model is allowed more than one
replica or keeps a floor) and from the request's path.

A round restores floors, adds the replicas a deep queue justifies and unloads idle extras, every `interval`
seconds. A request placed on a replica whose queue already reaches the threshold decides a scale-out at once
(`Lifecycle.on_demand`: a dictionary look-up and a comparison on the path of every other request, nothing
parsed), so a burst gets its replicas without waiting out the interval, and if that replica is full while
one is coming the request is held in the gateway (`cortex_gateway.hold`) rather than queued behind it.
Replica loads run in the background, concurrently on different nodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cortex_gateway.fleet import Node
from cortex_gateway.hold import Hold, Holds
from cortex_gateway.keep_alive import first_seen, idle_from
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.replicas import (
    Bounds,
    Placement,
    ReplicaLoad,
    ReplicaUnload,
    holds,
    reserve_all,
    restore_min,
    scale_in,
    scale_out,
    scale_outs,
    waiting_on,
    wanted,
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
    """Carries out scale out, restore, scale in and holds against the fleet; `now` is injectable for tests."""

    def __init__(self, lifecycle: Lifecycle, now: Callable[[], float] = time.time):
        self.lifecycle = lifecycle
        self.now = now
        scheduling, models = lifecycle.config.scheduling, lifecycle.config.models
        self.per_replica, self.idle_s = scheduling.scale_out_queue, scheduling.replica_idle_s
        self.bounds = {m: Bounds(p.min_replicas, p.max_replicas) for m, p in models.items()
                       if p.max_replicas > 1 or p.min_replicas > 0}
        self.seen: dict[tuple[str, str], float] = {}
        self.loads: dict[str, dict[str, ReplicaLoad]] = {}  # model -> node -> its replica load under way
        self.tasks: set[asyncio.Task] = set()
        self.settled: set[str] = set()  # models the request path found no more room for, until the next round
        self.holds = Holds(scheduling.max_wait_s)
        lifecycle.on_demand = self.on_demand
        if self.bounds:  # a request ending frees a slot a held request may take (a look-up when none is held)
            lifecycle.on_request_ended = self.holds.changed
            lifecycle.held = self.holds.count

    @property
    def interval(self) -> float | None:
        """Seconds between rounds: the poll interval (the queues' figures are no fresher), and often enough to
        scale in within 1.25 times replica_idle_s; None when no model has replicas to manage."""
        if not self.bounds:
            return None
        return max(min(self.lifecycle.config.poll_interval_s, self.idle_s / 4), MIN_WAKE_S)

    # -- the request's path ---------------------------------------------------------------------------
    def on_demand(self, model: str, node: Node) -> Hold | None:
        """A request is being placed on `node`, a replica of `model`. Below the threshold there (and for a
        model without replicas to manage) nothing more. At it, the replicas the demand justifies are started
        now; and when `node` is full while one is coming, the request is held: the `Hold` to wait on."""
        bounds = self.bounds.get(model)
        if bounds is None or bounds.max <= 1 or waiting_at(self.lifecycle, node, model, extra=1) < self.per_replica:
            return None
        self.scale_now(model, extra=1)
        if not self.must_wait(model, node):
            return None
        return Hold(self.holds, model, lambda chosen: self.recheck(model, chosen))

    def must_wait(self, model: str, node: Node) -> bool:
        """Whether a request of `model` chosen for `node` waits: full there, and a replica of it loading."""
        in_flight = self.lifecycle.fleet.usage_of(node.name, model).in_flight
        return holds(in_flight, slots_of(node, model), self.per_replica, bool(self.loads.get(model)))

    def recheck(self, model: str, node: Node) -> bool:
        """A held request looks again: more replicas if the demand now justifies them, then `must_wait`."""
        self.scale_now(model)
        return self.must_wait(model, node)

    def scale_now(self, model: str, extra: int = 0) -> None:
        """Start the replicas of `model` its waiting requests justify now (`extra`: one being placed, not yet
        counted). Counted first without a snapshot, so a request that justifies none costs a few look-ups."""
        lifecycle = self.lifecycle
        if model in self.settled or model in lifecycle.loads_pending():
            return
        serving = [n for n in lifecycle.fleet.nodes.values() if n.accepting and n.has_loaded(model)]
        loading, ceiling = len(self.loads.get(model, ())), self.bounds[model].max
        if len(serving) + loading >= ceiling:
            return
        held = self.holds.count(model) + extra
        queued = sum(waiting_at(lifecycle, n, model) for n in serving) + held
        if not wanted(queued, len(serving), loading, self.per_replica, ceiling):
            return
        waiting = {n.name: waiting_at(lifecycle, n, model) for n in serving}
        decisions = scale_out(model, self.snapshot(), waiting, self.bounds[model], self.per_replica,
                              self.placement(), held)
        if not decisions:
            self.settled.add(model)  # nothing fits (or loads listed elsewhere cover it): the next round looks
        for decision in decisions:
            self.start(decision)

    # -- rounds -------------------------------------------------------------------------------------------
    def placement(self) -> Placement:
        lc, models = self.lifecycle, self.lifecycle.config.models
        return Placement(lc.config.strategy, lc.pins, lc.priorities(),
                         {m: list(p.pinned_on) for m, p in models.items()},
                         frozenset(m for m, p in models.items() if p.path or p.source))

    def snapshot(self) -> list[NodeView]:
        """The fleet as the deciders see it, with the gateway's own replica loads under way reserved (a
        poll lists a load only once it is asked, and its memory is taken from then)."""
        snapshot = self.lifecycle.snapshot()
        listed = {(v.name, m) for v in snapshot for m in v.loading | set(v.loaded)}
        own = [d for by_node in self.loads.values() for d in by_node.values() if (d.node, d.model) not in listed]
        return reserve_all(snapshot, own)

    def waiting(self) -> dict[str, dict[str, int]]:
        """Per managed model, per node serving it, its requests waiting for a slot."""
        nodes = [n for n in self.lifecycle.fleet.nodes.values() if n.accepting]
        return {m: {n.name: waiting_at(self.lifecycle, n, m) for n in nodes if n.has_loaded(m)}
                for m, b in self.bounds.items() if b.max > 1}

    def decide(self, snapshot: list[NodeView]) -> tuple[list[ReplicaLoad], list[ReplicaUnload]]:
        """Floors restored and scale-outs over `snapshot` (this scaler's loads reserved in it); a model a
        request's cold load is under way for waits for that load."""
        pending, placement = frozenset(self.lifecycle.loads_pending()), self.placement()
        loads = restore_min(snapshot, self.bounds, placement, pending)
        loads += scale_outs(reserve_all(snapshot, loads), self.waiting(), self.bounds, self.per_replica, placement,
                            pending, self.holds.counts)
        unloads = scale_in(idle_from(snapshot, self.seen), self.bounds, self.lifecycle.pins, self.idle_s,
                           self.now())
        return loads, unloads

    def start(self, decision: ReplicaLoad) -> None:
        """The load in the background, listed under its model until it ends (what a hold waits on)."""
        self.loads.setdefault(decision.model, {})[decision.node] = decision
        task = asyncio.create_task(self._load(decision))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def round(self) -> None:
        """Start the loads due (in the background) and carry out the unloads due. An unload is decided again
        on a fresh snapshot just before it is done: the ones before it awaited, and requests may have come."""
        self.settled.clear()
        snapshot = self.snapshot()
        self.seen = first_seen(snapshot, self.seen, self.now())
        loads, unloads = self.decide(snapshot)
        for decision in loads:
            self.start(decision)
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
            self.settled.add(decision.model)  # not again from the request path: a held request would retry it
            return
        finally:
            by_node = self.loads.get(decision.model, {})
            by_node.pop(decision.node, None)
            if not by_node:
                self.loads.pop(decision.model, None)
            self.holds.changed(decision.model)  # up (or failed): the held requests look again
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
        """A round at once (the floors pre-warmed), then every `interval` seconds, until cancelled; a round
        that fails is logged and the next one runs. Loads under way are cancelled with it."""
        try:
            while True:
                try:
                    await self.round()
                except Exception:  # noqa: BLE001 - the rounds must outlive any one bad answer
                    log.exception("replica round failed")
                await asyncio.sleep(interval)
        finally:
            for task in list(self.tasks):
                task.cancel()
