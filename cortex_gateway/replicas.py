"""Replicas: when to load a model on more nodes, which replicas to keep, which to unload, and when a request
waits in the gateway for a replica coming up. Pure: functions of a fleet snapshot (`router.NodeView`), no
I/O, as the router and evictor are; `cortex_gateway.scaler` carries the decisions out.

A replica is a healthy node taking requests with the model loaded; one coming is a healthy node loading it.
The ceiling and floor are the model's `max_replicas` and `min_replicas` (models.toml); a model without a
profile, or with the defaults (1 and 0), is never touched here: it is loaded on demand and evicted for
room, as it always was.

- Scale out: as many more replicas at once as the waiting demand justifies, each (serving, coming or new)
  needing `scale_out_queue` requests waiting (`wanted`), below `max_replicas`: the loads run concurrently,
  each on the node a cold load would choose (`router.plan_cold_load`, the nodes that hold it left out),
  but only one where it fits with NO eviction. A replica is an optimisation of a model already served;
  evicting another model for it, even an idle one, would buy it with someone else's cold start (and the
  keep-alive frees idle models anyway). One at a time, a burst would wait out a load per replica.
- Restore: a model below `min_replicas` gets the nodes it lacks, on the same terms (pre-warmed at start,
  restored after a node comes back).
- Scale in: of a model allowed more than one replica, the replicas beyond max(1, min_replicas) idle for
  `replica_idle_s` are unloaded, the least lately used first: never the last one, never a pinned or busy one.
- Hold (`holds`): a request whose replica is full to its slots plus `scale_out_queue` waits in the gateway
  while another replica is coming, rather than queue behind a node the new one would have relieved.

A model a request's cold load is under way for (`pending`) gets no replica until that load is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from cortex_gateway.router import NodeView, plan_cold_load


class Bounds(NamedTuple):
    """A model's `min_replicas` and `max_replicas`."""

    min: int = 0
    max: int = 1


@dataclass(frozen=True)
class ReplicaLoad:
    """Load `model` on `node`, for `reason`: "queue" (scale out) or "min_replicas" (restore)."""

    model: str
    node: str
    reason: str
    waiting: int = 0  # the requests waiting for a slot that asked for it (scale out)


@dataclass(frozen=True)
class ReplicaUnload:
    """Unload `model` from `node`, an extra replica idle for `idle_s`."""

    model: str
    node: str
    idle_s: float


@dataclass(frozen=True)
class Placement:
    """What a cold-load plan needs beyond the model and the snapshot (`router.plan_cold_load`'s arguments)."""

    strategy: str = "lru"
    pinned: dict[str, set[str]] = field(default_factory=dict)
    priorities: dict[str, int] = field(default_factory=dict)
    preferred: dict[str, list[str]] = field(default_factory=dict)  # model -> its profile's pinned_on
    anywhere: frozenset[str] = frozenset()  # models a profile loads by path or hub source

    def fitting(self, model: str, snapshot: list[NodeView]) -> str | None:
        """The best node without the model (loaded or loading) where it fits with nothing evicted, or None."""
        plans = plan_cold_load(model, snapshot, strategy=self.strategy, preferred=self.preferred.get(model, []),
                               loadable_anywhere=model in self.anywhere, pinned=self.pinned,
                               priorities=self.priorities, exclude=holding(model, snapshot))
        return next((p.node for p in plans if not p.evict), None)


def replicas(model: str, snapshot: list[NodeView]) -> list[NodeView]:
    """The nodes serving `model`: healthy (taking requests) with it loaded."""
    return [v for v in snapshot if v.healthy and model in v.loaded]


def holding(model: str, snapshot: list[NodeView]) -> frozenset[str]:
    """The nodes that have `model` loaded or loading, healthy or not: none of them is asked to load it again."""
    return frozenset(v.name for v in snapshot if model in v.loaded or model in v.loading)


def waiting_on(in_flight: int, slots: int, queued: int) -> int:
    """One replica's requests waiting for a slot: the gateway's in flight there beyond the model's slots (0
    slots: not reported), or what the node last said it queued (requests from elsewhere too), if more."""
    beyond = in_flight - slots if slots else 0
    return max(beyond, queued, 0)


def coming(model: str, snapshot: list[NodeView]) -> list[NodeView]:
    """The healthy nodes loading `model`: replicas on their way (a node down will not finish its load)."""
    return [v for v in snapshot if v.healthy and model in v.loading]


def wanted(waiting: int, serving: int, loading: int, per_replica: int, ceiling: int) -> int:
    """How many more replicas `waiting` requests justify: the fewest replicas at which fewer than
    `per_replica` wait per replica (one rule applied until it stops: one more whenever each replica has
    `per_replica` waiting), capped at `ceiling`, less those serving and loading already."""
    target = min(waiting // per_replica + 1, ceiling)
    return max(target - serving - loading, 0)


def holds(in_flight: int, slots: int, per_replica: int, replica_coming: bool) -> bool:
    """Whether a request chosen for a replica with `in_flight` of the gateway's requests there waits in the
    gateway instead: that replica is full to its slots plus `per_replica` waiting, and another replica of
    the model is being loaded (sent there, it would queue behind the full one's slots, however soon the
    new one serves). Slots not reported (0), or nothing coming: never, so one node behaves as it did."""
    return replica_coming and slots > 0 and in_flight >= slots + per_replica


def scale_out(model: str, snapshot: list[NodeView], waiting: dict[str, int], bounds: Bounds, per_replica: int,
              placement: Placement, held: int = 0) -> list[ReplicaLoad]:
    """The replicas to add for `model`: as many as its waiting requests justify (`wanted`: those waiting at
    its replicas, `waiting` node -> count, and those `held` in the gateway), each on another node where it
    fits; none when it is loaded nowhere (a cold load's business) or at its ceiling."""
    serving = replicas(model, snapshot)
    if not serving:
        return []
    queued = sum(waiting.get(v.name, 0) for v in serving) + held
    more = wanted(queued, len(serving), len(coming(model, snapshot)), per_replica, bounds.max)
    return _place(model, snapshot, more, "queue", queued, placement)


def scale_outs(snapshot: list[NodeView], waiting: dict[str, dict[str, int]], bounds: dict[str, Bounds],
               per_replica: int, placement: Placement, pending: frozenset[str] = frozenset(),
               held: dict[str, int] | None = None) -> list[ReplicaLoad]:
    """`scale_out` for every model with waiting requests, the memory each takes reserved before the next."""
    out: list[ReplicaLoad] = []
    for model in sorted(waiting):
        if model in pending:
            continue
        decisions = scale_out(model, snapshot, waiting[model], bounds.get(model, Bounds()), per_replica,
                              placement, (held or {}).get(model, 0))
        out += decisions
        snapshot = reserve_all(snapshot, decisions)
    return out


def restore_min(snapshot: list[NodeView], bounds: dict[str, Bounds], placement: Placement,
                pending: frozenset[str] = frozenset()) -> list[ReplicaLoad]:
    """The nodes each model below its `min_replicas` lacks (those loading it count), loaded at once."""
    out: list[ReplicaLoad] = []
    for model in sorted(bounds):
        if model in pending:
            continue
        short = bounds[model].min - len(replicas(model, snapshot)) - len(coming(model, snapshot))
        decisions = _place(model, snapshot, short, "min_replicas", 0, placement)
        out += decisions
        snapshot = reserve_all(snapshot, decisions)
    return out


def _place(model: str, snapshot: list[NodeView], count: int, reason: str, waiting: int,
           placement: Placement) -> list[ReplicaLoad]:
    """Up to `count` loads of `model`, each on the best node left where it fits with nothing evicted."""
    out: list[ReplicaLoad] = []
    for _ in range(max(count, 0)):
        node = placement.fitting(model, snapshot)
        if node is None:
            break
        out.append(ReplicaLoad(model, node, reason, waiting))
        snapshot = reserve(snapshot, out[-1])
    return out


def scale_in(snapshot: list[NodeView], bounds: dict[str, Bounds], pinned: dict[str, set[str]], idle_s: float,
             now: float) -> list[ReplicaUnload]:
    """The extra replicas to unload: of models allowed more than one, beyond max(1, min_replicas), idle for
    `idle_s` (nothing in flight, last used that long ago), not pinned there; the least lately used first."""
    out = []
    for model in sorted(bounds):
        if bounds[model].max <= 1:
            continue
        serving = replicas(model, snapshot)
        spare = len(serving) - max(1, bounds[model].min)
        idle = [v for v in serving if not v.busy.get(model, 0) and v.name not in pinned.get(model, ())
                and now - v.last_used.get(model, 0.0) >= idle_s]
        idle.sort(key=lambda v: (v.last_used.get(model, 0.0), v.name))
        out += [ReplicaUnload(model, v.name, now - v.last_used.get(model, 0.0)) for v in idle[:max(spare, 0)]]
    return out


def above_floor(unloads: list, snapshot: list[NodeView], floors: dict[str, int]) -> list:
    """Of `unloads` (anything with `model` and `node`: the keep-alive's too), those that leave each model at
    least its `min_replicas` replicas, in order: an idle model's floor outranks its keep-alive, or the
    keep-alive would unload what the next round restores."""
    left = {m: len(replicas(m, snapshot)) for m in floors}
    out = []
    for unload in unloads:
        floor = floors.get(unload.model, 0)
        if floor and left[unload.model] <= floor:
            continue
        if floor:
            left[unload.model] -= 1
        out.append(unload)
    return out


def reserve(snapshot: list[NodeView], decision: ReplicaLoad) -> list[NodeView]:
    """The snapshot as it will be once `decision` starts: the model loading there, its memory taken."""
    def after(v: NodeView) -> NodeView:
        need = v.available.get(decision.model, 0.0)
        return replace(v, free_mb=v.free_mb - need, loading=v.loading | {decision.model})
    return [after(v) if v.name == decision.node else v for v in snapshot]


def reserve_all(snapshot: list[NodeView], decisions: list[ReplicaLoad]) -> list[NodeView]:
    """`reserve` for each decision: the gateway's own loads under way, which no poll has listed yet."""
    for decision in decisions:
        snapshot = reserve(snapshot, decision)
    return snapshot
