"""One attempt at a cold load: plan it (`router.plan_cold_load`), evict the plan's victims, load, and say
why not when it cannot be done now: `MustWait` (only busy or resident models stand in the way: the
waiting queue in `cortex_gateway.cold_loads` tries again), or the error to answer (too big for every node,
failed for good, no healthy node).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cortex_gateway import router
from cortex_gateway.errors import model_too_large, no_capacity
from cortex_gateway.fleet import Node
from cortex_gateway.load_failures import cannot_load, catalog_version, gives_up, is_permanent
from cortex_gateway.router import NodeView, loading_on, next_victim, plan_cold_load
from neuron.shared.client import NeuronError
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelState

if TYPE_CHECKING:
    from cortex_gateway.lifecycle import Lifecycle

log = logging.getLogger("cortex.gateway.lifecycle")
MAX_EXTRA_EVICTIONS = 8


class MustWait(Exception):
    """No plan now, only because the models in the way are busy or resident: the load waits for a change.
    `refused`: a node refused to unload a victim the gateway counted idle (its request not yet ended there)."""

    def __init__(self, why: str, refused: bool = False):
        super().__init__(why)
        self.refused = refused


class LoadAttempts:
    """Cold-load attempts against the fleet as `lifecycle` sees it."""

    def __init__(self, lifecycle: Lifecycle):
        self.lc = lifecycle

    async def once(self, model: str, exclude: frozenset[str], yielding: frozenset[str]) -> Node:
        """Plan and carry the plan out: the node `model` is loaded on, or MustWait, or the ApiError to answer.
        `yielding`: nodes where `model` is claimed (it comes back there once swapped out; not loaded twice)."""
        lc = self.lc
        if (node := lc.loaded_node(model, exclude)) is not None:  # loaded meanwhile, or no longer yielding
            return node
        snapshot = lc.snapshot()
        if (busy_node := loading_on(model, snapshot)) is not None:
            return await self._await_loading(lc.fleet.nodes[busy_node], model)
        profile = lc.config.models.get(model)
        anywhere = bool(profile and (profile.path or profile.source))
        failed = self._failed_for_good(model)  # not asked again: nothing changed there since
        skip = exclude | failed.keys() | yielding
        plans = plan_cold_load(
            model, snapshot, strategy=lc.config.strategy, preferred=list(profile.pinned_on) if profile else [],
            loadable_anywhere=anywhere, pinned=lc.pins, priorities=lc.priorities(), exclude=skip)
        if not lc.fleet.healthy_nodes():
            raise no_capacity("no healthy neuron is available; check `cortex status`", retry_after=5)
        last_error = self._why_unplaceable(model, snapshot, skip)
        if not plans:
            if yielding:
                raise MustWait(f"model {model!r} is being swapped out on {', '.join(sorted(yielding))}")
            self._refuse_or_wait(model, snapshot, anywhere, skip, last_error)
        refused_busy = False  # a node found a victim busy (requests from elsewhere, or not yet ended there)
        for plan in plans:
            node = lc.fleet.nodes[plan.node]
            try:
                await self._evict_all(node, model, plan.evict)
                return await self._load_with_evictions(node, model)
            except NeuronError as err:
                last_error = f"{node.name}: {err.message}"
                # Busy victims, or too little memory left by busy models (another load took what this one
                # planned with): both pass once a model there goes idle.
                refused_busy = refused_busy or err.code == "model_busy" or (
                    err.code == "insufficient_memory" and self._busy_hold_room(node, model))
                if err.unreachable:
                    lc.fleet.mark_failed(node, err.message)
                if is_permanent(err):
                    failed[node.name] = self._remember_failure(node, model, err)
                log.warning("cold load of %s on %s failed: %s", model, node.name, err.message)
        candidates = (n.name for n in snapshot if n.healthy and n.name not in exclude
                      and (anywhere or model in n.available))
        if refused_busy:
            raise MustWait(last_error, refused=True)
        if gives_up(candidates, failed):
            raise cannot_load(model, failed)
        raise no_capacity(last_error, retry_after=10)

    def _busy_hold_room(self, node: Node, model: str) -> bool:
        lc = self.lc
        return router.waiting_helps(model, [lc.view(node)], strategy=lc.config.strategy, loadable_anywhere=True,
                                    pinned=lc.pins, priorities=lc.priorities())

    def _failed_for_good(self, model: str) -> dict[str, ApiError]:
        """The nodes where loading `model` failed permanently, and that have not changed since."""
        now, failures = time.monotonic(), self.lc.load_failures
        found = {n.name: failures.blocking(n.name, model, catalog_version(n.available), n.health.uptime_s, now=now)
                 for n in self.lc.fleet.nodes.values()}
        return {name: err for name, err in found.items() if err is not None}

    def _remember_failure(self, node: Node, model: str, err: NeuronError) -> ApiError:
        self.lc.load_failures.record(node.name, model, err, catalog_version(node.available), node.health.uptime_s,
                                     now=time.monotonic())
        self.lc.fleet.event("load_failed", node=node.name, model=model, code=err.code)
        return err

    def _refuse_or_wait(self, model: str, snapshot: list[NodeView], anywhere: bool, exclude: frozenset[str],
                        why: str) -> None:
        """With no plan: a model too big for every node is refused at once; one kept out only by busy or
        resident models waits (MustWait); otherwise the caller gives its 503 now."""
        lc = self.lc
        too_big = router.never_fits(model, snapshot, loadable_anywhere=anywhere, exclude=exclude)
        if too_big is not None:
            raise model_too_large(model, too_big)
        if router.waiting_helps(model, snapshot, strategy=lc.config.strategy, loadable_anywhere=anywhere,
                                pinned=lc.pins, priorities=lc.priorities(), exclude=exclude):
            raise MustWait(why)

    def _why_unplaceable(self, model: str, snapshot: list[NodeView], exclude: frozenset[str]) -> str:
        offering = [n.name for n in snapshot if n.healthy and n.name not in exclude and model in n.available]
        if not offering:
            failed = f" ({', '.join(sorted(exclude))} failed just now)" if exclude else ""
            draining = sorted(n.name for n in self.lc.fleet.nodes.values() if n.draining)
            drained = f" ({', '.join(draining)} draining)" if draining else ""
            return f"no healthy node can load model {model!r} now{failed}{drained}; check `cortex status`"
        return (f"no room for model {model!r} on {', '.join(offering)}: every candidate is full of "
                "pinned or busy models")

    async def _evict_all(self, node: Node, model: str, victims: tuple[str, ...]) -> None:
        """Evict the plan's victims; one the node finds busy is replaced by the next in eviction order, one it
        no longer has counts as gone (never as a failure to load `model`)."""
        refused: set[str] = set()
        queue = list(victims)
        while queue:
            victim = queue.pop(0)
            try:
                await self.lc.evict(node, victim)
            except NeuronError as err:
                if err.code == "model_not_found":  # gone already (unloaded from elsewhere): its room is free
                    continue
                if err.code != "model_busy" or len(refused) >= MAX_EXTRA_EVICTIONS:
                    raise
                refused.add(victim)
                replacement = self._next_victim(node, model, frozenset(refused) | set(queue))
                if replacement is None:
                    raise
                queue.append(replacement)

    def _next_victim(self, node: Node, model: str, keep: frozenset[str] = frozenset()) -> str | None:
        lc = self.lc
        return next_victim(model, lc.view(node, keep), strategy=lc.config.strategy, pinned=lc.pins,
                           priorities=lc.priorities())

    async def _load_with_evictions(self, node: Node, model: str) -> Node:
        """Load; when the node says it lacks memory, evict one more model and retry."""
        for _ in range(MAX_EXTRA_EVICTIONS + 1):
            try:
                await self.lc.load(node, model, cold=True)
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
        deadline = time.monotonic() + self.lc.config.load_timeout_s
        while time.monotonic() < deadline:
            await self.lc.fleet.poll_node(node)
            info = node.models.get(model)
            if info is None:
                break
            if info.status == ModelState.LOADED:
                return node
            await asyncio.sleep(0.2)
        return await self._load_with_evictions(node, model)
