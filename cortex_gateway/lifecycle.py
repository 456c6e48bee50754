"""Getting a model onto a node: cold loads (single-flight), evictions, admin load/unload.

The decisions come from `router` and `evictor` (pure); this module carries
them out against the neurons and keeps the fleet's view current. A cold load
whose room is held only by busy models waits (up to `[scheduling] max_wait_s`)
and plans again each time the room may have changed: one of the gateway's
models on a node going idle, or a poll (`_room_changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from cortex_gateway import router
from cortex_gateway.config import GatewayConfig
from cortex_gateway.errors import model_too_large, no_capacity, unknown_model
from cortex_gateway.fleet import Fleet, Node
from cortex_gateway.learned_memory import LearnedMemoryStore, key_for_placing, key_of_loaded
from cortex_gateway.load_failures import LoadFailures, cannot_load, catalog_version, gives_up, is_permanent
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.prefix_map import PrefixMap, RequestKeys
from cortex_gateway.router import Affinity, NodeView, choose_loaded, loading_on, next_victim, plan_cold_load
from neuron.shared.client import NeuronError
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelInfo, ModelKind, ModelState

log = logging.getLogger("cortex.gateway.lifecycle")
NOT_UNLOADED = ("model_busy", "model_not_found")  # busy from elsewhere, or gone already: the next round sees
MAX_EXTRA_EVICTIONS = 8


class _MustWait(Exception):
    """No plan now, only because the models in the way are busy: the cold load waits for one to idle."""


class Lifecycle:
    def __init__(self, config: GatewayConfig, fleet: Fleet, metrics: GatewayMetrics,
                 learned: LearnedMemoryStore | None = None):
        self.config = config
        self.fleet = fleet
        self.metrics = metrics
        # Measured memory of models loaded before, anywhere: replaces the nodes' estimates in `view`.
        self.learned = learned or LearnedMemoryStore()
        fleet.on_polled = self._polled
        # Set (and replaced) whenever room may have appeared; a waiting cold load takes it before planning,
        # so a change while it plans is not missed. An Event, not a lock: the waiter holds nothing.
        self._room_changed = asyncio.Event()
        self.pins: dict[str, set[str]] = {m: set(p.pinned_on) for m, p in config.models.items()}
        self._loads: dict[str, asyncio.Future] = {}
        self.load_failures = LoadFailures()  # cold loads that failed for good, not asked for again
        self.prefixes = PrefixMap(config.scheduling.prefix_map_entries)  # what was sent where (affinity)
        # A request is being placed on a node that has its model loaded (cortex_gateway.scaler wakes on it).
        self.on_demand: Callable[[str, Node], None] = lambda model, node: None

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
        loading = frozenset(m for m, i in models.items() if i.status.pending)
        busy, last_used = {}, {}
        for m in models:
            usage = self.fleet.usage_of(node.name, m)
            busy[m] = usage.in_flight + (1 if m in refused else 0)
            last_used[m] = usage.last_used
        available = {m: self.need_mb(node, m, a.need_mb) for m, a in node.available.items()}
        return NodeView(node.name, node.accepting, node.health.free_mb, loaded, loading, available, busy, last_used)

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
        """After each good poll: learn what the node measured, and let waiting cold loads plan again."""
        self.learn_from(node)
        self._wake_waiting()

    def request_ended(self, node: str, model: str) -> None:
        """A request through the gateway ended (dispatch): once the model is idle there, it can be a victim."""
        if self.fleet.usage_of(node, model).in_flight == 0:
            self._wake_waiting()

    def _wake_waiting(self) -> None:
        self._room_changed.set()
        self._room_changed = asyncio.Event()

    def snapshot(self) -> list[NodeView]:
        return [self.view(n) for n in self.fleet.nodes.values()]

    def priorities(self) -> dict[str, int]:
        return {m: p.priority for m, p in self.config.models.items()}

    def known(self, model: str) -> bool:
        if model in self.config.models:
            return True
        return any(model in n.models or model in n.available for n in self.fleet.nodes.values())

    def embedding_only(self, model: str) -> bool:
        """True when every node that lists `model` (loaded or on disk) says it only embeds.

        Asked before a cold load so that a chat request for an embedding model is refused at
        once, rather than after loading it (and perhaps evicting something busy to make room).
        """
        kinds = set()
        for node in self.fleet.nodes.values():
            info = node.models.get(node.aliases.get(model, model))
            if info is not None:
                kinds.add(info.kind)
            if model in node.available:
                kinds.add(node.available[model].kind)
        return kinds == {ModelKind.EMBEDDING}

    def loads_pending(self) -> set[str]:
        """Models a request's cold load is under way for."""
        return set(self._loads)

    # -- requests ------------------------------------------------------------------
    def loaded_node(self, model: str, exclude: frozenset[str] = frozenset(),
                    keys: RequestKeys | None = None) -> Node | None:
        """The hot path: a node that has `model` loaded, decided without awaiting anything.

        Only nodes holding the model are looked at, so the cost does not grow with the fleet's catalog.
        The request's `keys` are read (its body parsed) only when two or more nodes have it loaded: with
        one there is nothing to choose, and the body passes through unread.
        """
        views = []
        for node in self.fleet.nodes.values():
            if node.accepting and node.has_loaded(model):
                # For choosing among nodes a seconds-old hint of others' load is good enough.
                busy = self.fleet.usage_of(node.name, model).in_flight + node.polled_load(model)
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

    async def node_for(self, model: str, exclude: frozenset[str] = frozenset()) -> Node:
        """A healthy node with `model` loaded, cold-loading it if needed."""
        node = self.loaded_node(model, exclude)
        if node is not None:
            return node
        if not self.known(model):
            raise unknown_model(model)
        pending = self._loads.get(model)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loads[model] = pending
            asyncio.get_running_loop().create_task(self._cold_load(model, exclude, pending))
        try:
            node = await asyncio.wait_for(asyncio.shield(pending), self.config.load_timeout_s)
        except TimeoutError:
            raise no_capacity(f"loading model {model!r} took longer than {self.config.load_timeout_s:g}s; "
                              "retry shortly", retry_after=10) from None
        return node

    async def _cold_load(self, model: str, exclude: frozenset[str], done: asyncio.Future) -> None:
        try:
            node = await self._place(model, exclude)
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiter
            if not done.done():
                done.set_exception(exc)
            done.exception()  # mark retrieved: waiters may all have timed out
        else:
            if not done.done():
                done.set_result(node)
        finally:
            self._loads.pop(model, None)

    async def _place(self, model: str, exclude: frozenset[str]) -> Node:
        """Plan and load; while only busy models stand in the way, wait for a change and plan again."""
        max_wait = self.config.scheduling.max_wait_s
        deadline = time.monotonic() + max_wait
        for tries in itertools.count():
            changed = self._room_changed  # before planning: a change from now on ends the wait below
            try:
                return await self._place_once(model, exclude)
            except _MustWait as why:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise no_capacity(f"{why}; waited {max_wait:g}s ([scheduling] max_wait_s) for one to go idle",
                                      retry_after=10) from None
                if tries == 0:
                    self.fleet.event("cold_load_waits", model=model, max_wait_s=max_wait)
                log.debug("cold load of %s waits for a busy model to go idle (%.0fs left)", model, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)

    async def _place_once(self, model: str, exclude: frozenset[str]) -> Node:
        snapshot = self.snapshot()
        if (busy_node := loading_on(model, snapshot)) is not None:
            return await self._await_loading(self.fleet.nodes[busy_node], model)
        profile = self.config.models.get(model)
        anywhere = bool(profile and (profile.path or profile.source))
        failed = self._failed_for_good(model)  # not asked again: nothing changed there since
        plans = plan_cold_load(
            model, snapshot, strategy=self.config.strategy, preferred=list(profile.pinned_on) if profile else [],
            loadable_anywhere=anywhere, pinned=self.pins, priorities=self.priorities(),
            exclude=exclude | failed.keys())
        if not self.fleet.healthy_nodes():
            raise no_capacity("no healthy neuron is available; check `cortex status`", retry_after=5)
        last_error = self._why_unplaceable(model, snapshot, exclude | failed.keys())
        if not plans:
            self._refuse_or_wait(model, snapshot, anywhere, exclude | failed.keys(), last_error)
        refused_busy = False  # a node found a victim busy (requests from elsewhere, or not yet ended there)
        for plan in plans:
            node = self.fleet.nodes[plan.node]
            try:
                await self._evict_all(node, model, plan.evict)
                return await self._load_with_evictions(node, model)
            except NeuronError as err:
                last_error = f"{node.name}: {err.message}"
                refused_busy = refused_busy or err.code == "model_busy"
                if err.unreachable:
                    self.fleet.mark_failed(node, err.message)
                if is_permanent(err):
                    failed[node.name] = self._remember_failure(node, model, err)
                log.warning("cold load of %s on %s failed: %s", model, node.name, err.message)
        candidates = (n.name for n in snapshot if n.healthy and n.name not in exclude
                      and (anywhere or model in n.available))
        if refused_busy:
            raise _MustWait(last_error)
        if gives_up(candidates, failed):
            raise cannot_load(model, failed)
        raise no_capacity(last_error, retry_after=10)

    def _failed_for_good(self, model: str) -> dict[str, ApiError]:
        """The nodes where loading `model` failed permanently, and that have not changed since."""
        now = time.monotonic()
        found = {n.name: self.load_failures.blocking(n.name, model, catalog_version(n.available),
                                                     n.health.uptime_s, now=now) for n in self.fleet.nodes.values()}
        return {name: err for name, err in found.items() if err is not None}

    def _remember_failure(self, node: Node, model: str, err: NeuronError) -> ApiError:
        self.load_failures.record(node.name, model, err, catalog_version(node.available), node.health.uptime_s,
                                  now=time.monotonic())
        self.fleet.event("load_failed", node=node.name, model=model, code=err.code)
        return err

    def _refuse_or_wait(self, model: str, snapshot: list[NodeView], anywhere: bool, exclude: frozenset[str],
                        why: str) -> None:
        """With no plan: a model too big for every node is refused at once; one kept out only by busy
        models waits (_MustWait); otherwise the caller gives its 503 now."""
        too_big = router.never_fits(model, snapshot, loadable_anywhere=anywhere, exclude=exclude)
        if too_big is not None:
            raise model_too_large(model, too_big)
        if router.waiting_helps(model, snapshot, strategy=self.config.strategy, loadable_anywhere=anywhere,
                         pinned=self.pins, priorities=self.priorities(), exclude=exclude):
            raise _MustWait(why)

    def _why_unplaceable(self, model: str, snapshot: list[NodeView], exclude: frozenset[str]) -> str:
        offering = [n.name for n in snapshot if n.healthy and n.name not in exclude and model in n.available]
        if not offering:
            failed = f" ({', '.join(sorted(exclude))} failed just now)" if exclude else ""
            draining = sorted(n.name for n in self.fleet.nodes.values() if n.draining)
            drained = f" ({', '.join(draining)} draining)" if draining else ""
            return f"no healthy node can load model {model!r} now{failed}{drained}; check `cortex status`"
        return (f"no room for model {model!r} on {', '.join(offering)}: every candidate is full of "
                "pinned or busy models")

    async def _evict_all(self, node: Node, model: str, victims: tuple[str, ...]) -> None:
        """Evict the plan's victims; one the node finds busy is replaced by the next in eviction order."""
        refused: set[str] = set()
        queue = list(victims)
        while queue:
            victim = queue.pop(0)
            try:
                await self.evict(node, victim)
            except NeuronError as err:
                if err.code != "model_busy" or len(refused) >= MAX_EXTRA_EVICTIONS:
                    raise
                refused.add(victim)
                replacement = self._next_victim(node, model, frozenset(refused) | set(queue))
                if replacement is None:
                    raise
                queue.append(replacement)

    def _next_victim(self, node: Node, model: str, keep: frozenset[str] = frozenset()) -> str | None:
        return next_victim(model, self.view(node, keep), strategy=self.config.strategy, pinned=self.pins,
                           priorities=self.priorities())

    async def _load_with_evictions(self, node: Node, model: str) -> Node:
        """Load; when the node says it lacks memory, evict one more model and retry."""
        for _ in range(MAX_EXTRA_EVICTIONS + 1):
            try:
                await self.load(node, model, cold=True)
                return node
            except NeuronError as err:
                if err.code != "insufficient_memory":
                    raise
                victim = self._next_victim(node, model)
                if victim is None:
                    raise
                await self._evict_all(node, model, (victim,))
        raise NeuronError(507, "insufficient_memory", f"model {model!r} does not fit on {node.name}",
                          code="insufficient_memory")

    async def _await_loading(self, node: Node, model: str) -> Node:
        deadline = time.monotonic() + self.config.load_timeout_s
        while time.monotonic() < deadline:
            await self.fleet.poll_node(node)
            info = node.models.get(model)
            if info is None:
                break
            if info.status == ModelState.LOADED:
                return node
            await asyncio.sleep(0.2)
        return await self._load_with_evictions(node, model)

    # -- actions (also the admin API's) ---------------------------------------------
    def spec_for(self, model: str, devices: list | None = None, backend: str | None = None) -> dict:
        profile = self.config.models.get(model)
        spec = profile.load_spec() if profile else {"model": model}
        if devices:
            spec["devices"] = devices
        if backend:
            spec["backend"] = backend
        return spec

    async def load(self, node: Node, model: str, *, cold: bool = False, devices=None, backend=None) -> ModelInfo:
        started = time.monotonic()
        info = await node.client.load(self.spec_for(model, devices, backend), timeout=self.config.load_timeout_s)
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
        result = await node.client.unload(model, if_idle=if_idle)
        node.models.pop(model, None)
        await self.fleet.poll_node(node)
        return result

    async def unload_if_idle(self, node: Node, model: str, what: str) -> bool:
        """Unload `model` (the gateway's name for it) unless the node says it is busy; False when not done.

        A model busy from elsewhere, or already gone, is for the next round to see (logged at debug); any
        other refusal is a warning. The rounds that unload (keep-alive, scale-in) all go through here."""
        try:
            await self.unload(node, node.upstream_id(model), if_idle=True)
        except NeuronError as err:
            level = logging.DEBUG if err.code in NOT_UNLOADED else logging.WARNING
            log.log(level, "%s of %s on %s not done (next round tries again): %s", what, model, node.name,
                    err.message)
            return False
        return True
