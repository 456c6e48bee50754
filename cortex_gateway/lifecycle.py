"""Models on nodes as the gateway sees and changes them: the snapshot the pure deciders read (`view`), the
request's choice among the nodes that have its model loaded, and the loads and unloads (also the admin API's).

Cold loads, their evictions and their waiting queue are `cortex_gateway.cold_loads`; this module tells it
when room may have changed (`wake_waiting`: a model of the gateway's going idle on a node, a poll).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cortex_gateway.cold_loads import ColdLoads
from cortex_gateway.config import GatewayConfig
from cortex_gateway.errors import unknown_model
from cortex_gateway.fleet import Fleet, Node
from cortex_gateway.learned_memory import LearnedMemoryStore, key_for_placing, key_of_loaded
from cortex_gateway.load_failures import LoadFailures
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.prefix_map import PrefixMap, RequestKeys
from cortex_gateway.router import Affinity, NodeView, choose_loaded
from neuron.shared.client import NeuronError
from neuron.shared.protocol import ModelInfo, ModelKind, ModelState

if TYPE_CHECKING:
    from cortex_gateway.hold import Hold

log = logging.getLogger("cortex.gateway.lifecycle")
NOT_UNLOADED = ("model_busy", "model_not_found")  # busy from elsewhere, or gone already: the next round sees


class Lifecycle:
    def __init__(self, config: GatewayConfig, fleet: Fleet, metrics: GatewayMetrics,
                 learned: LearnedMemoryStore | None = None):
        self.config = config
        self.fleet = fleet
        self.metrics = metrics
        # Measured memory of models loaded before, anywhere: replaces the nodes' estimates in `view`.
        self.learned = learned or LearnedMemoryStore()
        fleet.on_polled = self._polled
        # Set (and replaced) whenever room may have appeared; the waiting queue takes it before planning,
        # so a change while it plans is not missed. An Event, not a lock: the waiter holds nothing.
        self.room_changed = asyncio.Event()
        self.pins: dict[str, set[str]] = {m: set(p.pinned_on) for m, p in config.models.items()}
        self.cold = ColdLoads(self)
        self._learned_from: dict[str, dict] = {}  # node -> the models dict last learned from (see _polled)
        self._loading: set[tuple[str, str]] = set()  # (node, model) loads this gateway has asked for, under way
        self.load_failures = LoadFailures()  # cold loads that failed for good, not asked for again
        self.prefixes = PrefixMap(config.scheduling.prefix_map_entries)  # what was sent where (affinity)
        # A request is being placed on a node that has its model loaded (cortex_gateway.scaler wakes on it).
        # A request is being placed on a node that has its model loaded: the replica rounds may add replicas, and
        # answer a Hold the request waits on first (cortex_gateway.scaler, cortex_gateway.hold); None: go ahead.
        self.on_demand: Callable[[str, Node], Hold | None] = lambda model, node: None
        self.on_request_ended: Callable[[str], None] = lambda model: None  # a held request may take the slot
        self.held: Callable[[str], int] = lambda model: 0  # requests held in the gateway for a replica (hold.Holds)

    # -- snapshot for the pure deciders ------------------------------------------
    def view(self, node: Node, refused: frozenset[str] = frozenset()) -> NodeView:
        """The node as the pure deciders see it.

        A model counts as busy for eviction only by the gateway's own exact in-flight count, or
        when the node has just refused to unload it (`refused`): a polled figure can be a poll
        interval old and would protect a model whose requests finished long ago. The node itself
        refuses to evict a model busy with requests from elsewhere (`unload` with `if_idle`).
        """
        # A model a profile loaded by path or source is listed under both names: count it once, by the
        # gateway's (the name its pins, priority and in-flight counts are kept under).
        models = {m: i for m, i in node.models.items() if m not in node.aliases.values() or m in node.aliases}
        loaded = {m: i.memory_mb for m, i in models.items() if i.status == ModelState.LOADED}
        loading = frozenset(m for m, i in models.items() if i.status.pending) | {
            m for n, m in self._loading if n == node.name}
        busy, last_used, fresh = {}, {}, self.cold.fresh_on(node.name)
        for m in models:
            usage = self.fleet.usage_of(node.name, m)
            busy[m] = usage.in_flight + (1 if m in refused or m in fresh else 0)
            last_used[m] = usage.last_used
        available = {m: self.need_mb(node, m, a.need_mb) for m, a in node.available.items()}
        resident = self.cold.resident_on(node.name, loaded, time.monotonic())
        # Memory the gateway's own loads under way there will take, unless the node already counts them (listed
        # as loading): two loads planned at once would otherwise both count the same free memory.
        claimed = sum(available.get(m, 0.0) for n, m in self._loading if n == node.name and m not in models)
        return NodeView(node.name, node.accepting, node.health.free_mb - claimed, loaded, loading, available, busy,
                        last_used, resident)

    def need_mb(self, node: Node, model: str, estimate: float) -> float:
        """MiB to plan for loading `model` on `node`: what it measured before on such a device, else the estimate."""
        key = key_for_placing(model, self.spec_for(model), node.health.devices)
        mb, source = self.learned.need(key, estimate)
        if source == "learned":
            log.debug("placing %s on %s: %.1f MiB learned (%s), not the %.1f MiB estimate", model, node.name, mb,
                      key, estimate)
        return mb

    def learn_from(self, node: Node) -> None:
        """Keep what the node measured for each model it has loaded (after every poll and every load)."""
        for model_id, info in node.models.items():
            if model_id == info.id and info.status == ModelState.LOADED:  # an alias entry is the same load
                self.learned.observe(key_of_loaded(info, node.health.devices), info.memory_mb)

    def _polled(self, node: Node) -> None:
        """After each good poll: learn what the node measured (only when its models changed: an unchanged poll
        keeps the same dict, and re-reading a thousand nodes' figures each round was a third of idle polling's
        CPU), and let waiting cold loads plan again."""
        if self._learned_from.get(node.name) is not node.models:
            self._learned_from[node.name] = node.models
            self.learn_from(node)
        self.cold.polled(node.name)
        self.wake_waiting()

    def request_ended(self, node: str, model: str) -> None:
        """A request through the gateway ended (dispatch): once the model is idle there, it can be a victim."""
        self.cold.request_ended(node, model)
        self.on_request_ended(model)
        if self.fleet.usage_of(node, model).in_flight == 0:
            self.wake_waiting()

    def wake_waiting(self) -> None:
        self.room_changed.set()
        self.room_changed = asyncio.Event()

    def snapshot(self) -> list[NodeView]:
        return [self.view(n) for n in self.fleet.nodes.values()]

    def priorities(self) -> dict[str, int]:
        return {m: p.priority for m, p in self.config.models.items()}

    def known(self, model: str) -> bool:
        if model in self.config.models:
            return True
        return any(model in n.models or model in n.available for n in self.fleet.nodes.values())

    def kind_of(self, model: str) -> ModelKind | None:
        """The kind every node that lists `model` (loaded or on disk) says it is; None when none lists it
        or they disagree (the node that loads it will say).

        Asked before a cold load so that a request to the wrong kind (a chat for an embedding model, a
        rerank for a chat model) is refused at once, rather than after loading the model (and perhaps
        evicting something busy to make room).
        """
        kinds = set()
        for node in self.fleet.nodes.values():
            info = node.models.get(node.aliases.get(model, model))
            if info is not None:
                kinds.add(info.kind)
            if model in node.available:
                kinds.add(node.available[model].kind)
        return kinds.pop() if len(kinds) == 1 else None

    def loads_pending(self) -> set[str]:
        """Models a request's cold load is under way for."""
        return self.cold.pending()

    # -- requests ------------------------------------------------------------------
    def loaded_node(self, model: str, exclude: frozenset[str] = frozenset(),
                    keys: RequestKeys | None = None) -> Node | None:
        """The hot path: a node that has `model` loaded, decided without awaiting anything.

        Only nodes holding the model are looked at (the fleet's model -> nodes index, kept on poll), so the
        cost grows neither with the fleet nor with its catalog. The request's `keys` are read (its body
        parsed) only when two or more nodes have it loaded: with one there is nothing to choose, and the
        body passes through unread.
        """
        views, yielding = [], self.cold.claimed_on(model) if self.cold.claims else frozenset()
        for node in self.fleet.nodes_with(model):
            if node.accepting and node.has_loaded(model) and node.name not in yielding:
                # The gateway's exact count, or the node's last polled one if more (it sees other clients too, but
                # also the gateway's own requests of that moment: a sum would count those twice).
                busy = max(self.fleet.usage_of(node.name, model).in_flight, node.polled_load(model))
                views.append(NodeView(node.name, True, 0.0, {model: 0.0}, busy={model: busy}))
        affinity = None
        if keys is not None and len(views) >= 2 and self.prefixes.enabled:
            affinity = Affinity(self.prefixes.depths(keys.prefix), self.prefixes.hinted(keys.hints),
                                self.config.scheduling.affinity_margin)
        choice = choose_loaded(model, views, exclude, affinity)
        if choice is None:
            return None
        if affinity is not None:
            log.debug("routing %s to %s: %s", model, choice.node, choice.reason)
        return self.fleet.nodes[choice.node]

    def served(self, keys: RequestKeys, node: str) -> None:
        """`node` answered the request: remember its prefix and hints there, if they were read at all."""
        if keys.parsed and self.prefixes.enabled:
            self.prefixes.record(keys.prefix + keys.hints, node)

    async def node_for(self, model: str, exclude: frozenset[str] = frozenset(), priority: str = "normal") -> Node:
        """A healthy node with `model` loaded, cold-loading it if needed (`cortex_gateway.cold_loads`; the
        request's `priority` orders the loads that wait for room)."""
        node = self.loaded_node(model, exclude)
        if node is not None:
            return node
        if not self.known(model):
            raise unknown_model(model)
        return await self.cold.get(model, exclude, priority)

    def serving_only_low(self) -> frozenset[tuple[str, str]]:
        """(node, model) pairs busy with low-priority requests only: the victims a waiting load claims first."""
        return frozenset(k for k, u in self.fleet.usage.items() if u.in_flight > 0 and u.above_low == 0)

    # -- actions (also the admin API's) ---------------------------------------------
    def spec_for(self, model: str, devices: list | None = None, backend: str | None = None,
                 speculative: dict | None = None) -> dict:
        """The node's load request for `model`: its profile's, with what an admin load asked instead."""
        profile = self.config.models.get(model)
        spec = profile.load_spec() if profile else {"model": model}
        if devices:
            spec["devices"] = devices
        if backend:
            spec["backend"] = backend
        if speculative:
            spec["speculative"] = speculative
        return spec

    async def load(self, node: Node, model: str, *, cold: bool = False, devices=None, backend=None,
                   speculative: dict | None = None) -> ModelInfo:
        started = time.monotonic()
        self._loading.add((node.name, model))  # seen by `view` at once: no other load of it is planned meanwhile
        try:
            info = await node.client.load(self.spec_for(model, devices, backend, speculative),
                                          timeout=self.config.load_timeout_s)
        finally:
            self._loading.discard((node.name, model))
        seconds = time.monotonic() - started
        self.load_failures.clear(node.name, model)
        node.models[info.id] = info
        if info.id != model:  # loaded by path or hub source: remember it under the gateway's name too
            node.models[model] = info
            node.aliases[model] = info.id
        self.fleet.usage_of(node.name, model).last_used = time.time()
        self.learn_from(node)
        if cold:
            self.metrics.cold_starts.labels(model, node.name).inc()
            self.metrics.cold_start_seconds.labels(model, node.name).observe(seconds)
        self.fleet.event("load", node=node.name, model=model, seconds=round(seconds, 2),
                         memory_mb=info.memory_mb)
        await self.fleet.poll_node(node)
        return info

    async def evict(self, node: Node, model: str) -> None:
        """Unload a model to make room, unless the node finds it busy (NeuronError model_busy)."""
        await self.unload(node, model, if_idle=True)
        self.metrics.evictions.labels(model, node.name, self.config.strategy).inc()
        self.fleet.event("evict", node=node.name, model=model, strategy=self.config.strategy)

    async def unload(self, node: Node, model: str, *, if_idle: bool = False) -> dict:
        """Unload `model`, by the gateway's name or the node's id: a model a profile loaded by path or hub
        source is known to the node by its path, so that is the one asked for; both names are forgotten."""
        upstream = node.upstream_id(model)
        result = await node.client.unload(upstream, if_idle=if_idle)
        names = {model, upstream} | {name for name, node_id in node.aliases.items() if node_id == upstream}
        for name in names:
            node.models.pop(name, None)
            self.cold.unloaded(node.name, name)
        await self.fleet.poll_node(node)
        return result

    async def unload_if_idle(self, node: Node, model: str, what: str) -> bool:
        """Unload `model` (the gateway's name for it) unless the node says it is busy; False when not done.

        A model busy from elsewhere, or already gone, is for the next round to see (logged at debug); any
        other refusal is a warning. The rounds that unload (keep-alive, scale-in) all go through here."""
        try:
            await self.unload(node, model, if_idle=True)
        except NeuronError as err:
            level = logging.DEBUG if err.code in NOT_UNLOADED else logging.WARNING
            log.log(level, "%s of %s on %s not done (next round tries again): %s", what, model, node.name,
                    err.message)
            return False
        return True
