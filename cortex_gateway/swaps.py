"""Swap-aware queueing: what cold loads that must wait do, as pure functions of a fleet snapshot (no I/O, as
the router and evictor are); `cortex_gateway.cold_loads` carries the decisions out.

When models outnumber memory, a cold load finds its room held by busy models. Served naively (evict
whichever model idles first, the moment it does), interleaved demand for three models on a node that holds
two swaps at nearly every request, each swap a load the requests behind it wait for. Three rules stop that:

- **One queue, by priority then oldest first, grouped by model.** Every request for a model joins its one
  pending load, and the waiting loads are tried by the highest priority among their requests (a key's
  `high`, `normal`, `low`), then in the order their first request came (`turn_order`), so the
  longest-waiting model gets the next room, not whichever asked last. A waiting load is promoted one class
  per quarter of `max_wait_s`, as the neuron's queue ages its waiters, so a low-priority load is not held
  to its deadline by a stream of higher ones.
- **Residency.** A swap (a load for requests that had to wait) keeps the node's working set for
  `min_residency_s` (`working_set`, `protected`): the model it loaded and every model there in use (requests
  in flight, or one ended within that time). So the node swaps at most once per residency while the
  contention lasts, each swap serving a turn's worth of demand; protecting only the model loaded would let
  the model just evicted claim the other resident at once, and swaps would come in pairs. A model idle
  longer than that is not protected, and a load that did not wait (its victims were idle) earns no
  residency: one user switching models gets each switch at once, as before.
- **Yielding.** A waiting load whose room is held by busy models past their residency claims them
  (`claim`): the gateway stops sending them new requests on that node (they wait for the model's return,
  in the same queue, behind the claimant), so the victim drains within its requests in flight, instead of
  staying busy for as long as its demand lasts. A protected model is never claimed, so no model yields
  sooner than `min_residency_s` after a waited-for load, and the claim ends when its load is placed or gives
  up. A waiting request is in flight nowhere, so no victim can be waiting itself: nothing deadlocks.

A waiting load still gives up after `[scheduling] max_wait_s`, so no request waits longer than that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from cortex_gateway.router import NodeView, plan_cold_load

RANKS = {"high": 0, "normal": 1, "low": 2}  # a request's priority as a rank: lower goes first


@dataclass(frozen=True)
class Waiting:
    """A cold load waiting for room: its model, when its first request came, when it gives up, and the best
    rank (RANKS) among the requests waiting for it."""

    model: str
    since: float
    deadline: float
    rank: int = RANKS["normal"]


@dataclass(frozen=True)
class Claim:
    """`victim` on `node` takes no new requests until it is evicted for `model`'s waiting load."""

    node: str
    victim: str
    model: str


def turn_order(waiting: Iterable[Waiting], now: float = 0.0, age_s: float = 0.0) -> list[Waiting]:
    """The waiting loads in the order they are tried: by rank, aged one class per `age_s` waited (0: no
    ageing), then the oldest first request first."""
    def rank(w: Waiting) -> int:
        return max(0, w.rank - int((now - w.since) // age_s)) if age_s > 0 else w.rank
    return sorted(waiting, key=lambda w: (rank(w), w.since, w.model))


def protected(loaded_at: dict[str, float], now: float, min_residency_s: float) -> frozenset[str]:
    """The models (of `loaded_at`: model -> when a waited-for load put it there) still within their residency."""
    return frozenset(m for m, at in loaded_at.items() if now - at < min_residency_s)


def working_set(model: str, view: NodeView, now: float, window_s: float) -> frozenset[str]:
    """What a swap that loaded `model` on `view`'s node keeps for `window_s`: `model`, and the models there in
    use (in flight, or last used within `window_s` of `now`, a wall-clock time as `last_used` is)."""
    used = {m for m in view.loaded if view.busy.get(m, 0) > 0 or now - view.last_used.get(m, 0.0) < window_s}
    return frozenset(used | {model})


def claim(model: str, snapshot: list[NodeView], claimed: Iterable[Claim], *, strategy: str,
          loadable_anywhere: bool, pinned: dict[str, set[str]], priorities: dict[str, int],
          exclude: frozenset[str] = frozenset(), low_only: frozenset[tuple[str, str]] = frozenset()) -> list[Claim]:
    """The busy victims `model`'s waiting load claims: the best plan there would be if busy models were idle
    (protected, pinned and already claimed ones stay in the way), or none when that plan evicts only idle
    models (it is about to run) or there is none (only time can help: residencies ending). Victims serving only
    low-priority work (`low_only`: (node, model) pairs) are claimed before any other, where a plan of those
    alone exists."""
    taken = {(c.node, c.victim) for c in claimed}
    kwargs = {"strategy": strategy, "loadable_anywhere": loadable_anywhere, "pinned": pinned,
              "priorities": priorities, "exclude": exclude}
    if low_only:
        others = {(v.name, m) for v in snapshot for m in v.loaded if v.busy.get(m, 0) and (v.name, m) not in low_only}
        found = _claims(model, snapshot, taken | others, **kwargs)
        if found:
            return found
    return _claims(model, snapshot, taken, **kwargs)


def _claims(model: str, snapshot: list[NodeView], kept_busy: set[tuple[str, str]], **kwargs) -> list[Claim]:
    views = [_claimable(v, kept_busy) for v in snapshot]
    plans = plan_cold_load(model, views, preferred=[], **kwargs)
    if not plans:
        return []
    busy = {v.name: v.busy for v in snapshot}
    plan = plans[0]
    return [Claim(plan.node, victim, model) for victim in plan.evict if busy[plan.node].get(victim, 0) > 0]


def _claimable(view: NodeView, kept_busy: set[tuple[str, str]]) -> NodeView:
    """The node with its busy models idle, except those kept busy (claimed already, or not to be claimed yet)."""
    busy = {m: 1 for m in view.loaded if (view.name, m) in kept_busy}
    return replace(view, busy=busy)


def holding_claimed(model: str, claims: Iterable[Claim]) -> frozenset[str]:
    """The nodes where `model` is claimed: a request for it waits for its return instead of going there."""
    return frozenset(c.node for c in claims if c.victim == model)
