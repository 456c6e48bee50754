"""Where a request goes: pure functions of a fleet snapshot, no I/O.

A loaded model goes to the least busy healthy node that has it, or, given what the prefix map knows
(`Affinity`), to the one likely to hold the request's prefix unless it is busier by more than a margin
(`cortex_gateway.affinity`). A model loaded
nowhere gets a cold-load plan: the candidate nodes in order (nodes its profile
names first, then nodes that hold it locally, then nodes where it fits without
evicting, then by free memory),
each with the models to evict there first. When there is none, `waiting_helps` says whether busy models
are all that stand in the way (the load waits for one to idle), and `never_fits` whether the model is too
big for every node's whole memory (refused at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cortex_gateway.affinity import Choice, pick
from cortex_gateway.evictor import Resident, choose_victims, eviction_order


@dataclass(frozen=True)
class NodeView:
    name: str
    healthy: bool
    free_mb: float
    loaded: dict[str, float] = field(default_factory=dict)  # model -> memory_mb, status loaded
    loading: frozenset[str] = frozenset()
    available: dict[str, float] = field(default_factory=dict)  # model -> estimated MiB to load it
    busy: dict[str, int] = field(default_factory=dict)  # model -> in flight + queued
    last_used: dict[str, float] = field(default_factory=dict)
    resident: frozenset[str] = frozenset()  # within min_residency_s of a waited-for load: not evicted (swaps)


@dataclass(frozen=True)
class LoadPlan:
    node: str
    need_mb: float
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Affinity:
    """What the prefix map knows of one request: per node its deepest matching block, its hint's node."""

    depths: dict[str, int]
    hinted: str | None
    margin: int  # [scheduling] affinity_margin


def route_loaded(model: str, nodes: list[NodeView], exclude: frozenset[str] = frozenset(),
                 affinity: Affinity | None = None) -> str | None:
    """The healthy node where `model` is loaded that should serve the request, or None."""
    choice = choose_loaded(model, nodes, exclude, affinity)
    return None if choice is None else choice.node


def choose_loaded(model: str, nodes: list[NodeView], exclude: frozenset[str] = frozenset(),
                  affinity: Affinity | None = None) -> Choice | None:
    """As `route_loaded`, with the reason: without `affinity`, the least busy."""
    busy = {n.name: n.busy.get(model, 0) for n in nodes if n.healthy and model in n.loaded and n.name not in exclude}
    if affinity is None:
        return pick(busy, {}, None, 0)
    return pick(busy, affinity.depths, affinity.hinted, affinity.margin)


def loading_on(model: str, nodes: list[NodeView]) -> str | None:
    return next((n.name for n in nodes if n.healthy and model in n.loading), None)


def plan_cold_load(
    model: str,
    nodes: list[NodeView],
    *,
    strategy: str,
    preferred: list[str],
    loadable_anywhere: bool,
    pinned: dict[str, set[str]],
    priorities: dict[str, int],
    exclude: frozenset[str] = frozenset(),
) -> list[LoadPlan]:
    """Feasible places to load `model`, best first; empty when no node can take it.

    `loadable_anywhere` is true when the model's profile names a path or hub
    source, so nodes that do not list it can still be asked.
    """
    plans = []
    for node in nodes:
        if not node.healthy or node.name in exclude:
            continue
        if model not in node.available and not loadable_anywhere:
            continue
        need = node.available.get(model, 0.0)
        victims = choose_victims(_residents(node, pinned, priorities), need - node.free_mb, strategy)
        if victims is None:
            continue
        plans.append(LoadPlan(node.name, need, tuple(v.model for v in victims)))
    rank = {name: i for i, name in enumerate(preferred)}
    by_name = {n.name: n for n in nodes}

    def order(p: LoadPlan):
        node = by_name[p.node]
        # Profile nodes, then nodes holding the model locally, then no eviction, then most free memory.
        return rank.get(p.node, len(rank)), model not in node.available, len(p.evict) > 0, -node.free_mb, p.node

    return sorted(plans, key=order)


def waiting_helps(model: str, nodes: list[NodeView], *, strategy: str, loadable_anywhere: bool,
                  pinned: dict[str, set[str]], priorities: dict[str, int],
                  exclude: frozenset[str] = frozenset()) -> bool:
    """Whether some candidate node would have a plan once its busy models go idle and its residencies end
    (pins and sizes aside)."""
    idle = [replace(n, busy={}, resident=frozenset()) for n in nodes]
    return bool(plan_cold_load(model, idle, strategy=strategy, preferred=[], loadable_anywhere=loadable_anywhere,
                               pinned=pinned, priorities=priorities, exclude=exclude))


@dataclass(frozen=True)
class TooBig:
    """Why a model can never be placed: its need on the roomiest candidate, and the most that node can hold."""

    need_mb: float
    node: str
    capacity_mb: float


def never_fits(model: str, nodes: list[NodeView], *, loadable_anywhere: bool,
               exclude: frozenset[str] = frozenset()) -> TooBig | None:
    """The figures when `model` needs more than every candidate's whole memory (free plus all loaded).

    Pinned models count as room too: a pin can be lifted, and a model kept out only by pins is the
    ordinary 503. A node loading something (its memory not yet known) or that does not list the model
    (its need unknown) might fit it: the refusal is only when sure.
    """
    candidates = [n for n in nodes if n.healthy and n.name not in exclude
                  and (model in n.available or loadable_anywhere)]
    if not candidates or any(n.loading or model not in n.available for n in candidates):
        return None
    closest = None
    for node in candidates:
        capacity = node.free_mb + sum(node.loaded.values())
        need = node.available[model]
        if need <= capacity:
            return None
        if closest is None or capacity - need > closest.capacity_mb - closest.need_mb:
            closest = TooBig(need, node.name, capacity)
    return closest


def next_victim(model: str, node: NodeView, *, strategy: str, pinned: dict[str, set[str]],
                priorities: dict[str, int]) -> str | None:
    """One more model to evict when the node refused a load for memory despite the estimate."""
    order = eviction_order(_residents(node, pinned, priorities, skip=model), strategy)
    return order[0].model if order else None


def _residents(node: NodeView, pinned: dict[str, set[str]], priorities: dict[str, int],
               skip: str | None = None) -> list[Resident]:
    return [Resident(m, mem, node.last_used.get(m, 0.0), priorities.get(m, 100),
                     node.name in pinned.get(m, set()), node.busy.get(m, 0) > 0 or m in node.resident)
            for m, mem in node.loaded.items() if m != skip]
