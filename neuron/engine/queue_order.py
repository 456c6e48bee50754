"""Which waiting request of a model goes next: a pure decision, its effects in `neuron.engine.admission`.

Three rules, in order:
1. Priority classes: high before normal before low.
2. Within a class, tenants (the key names the gateway sends) take turns: the tenant served least
   recently goes next, so one key's fifty queued requests do not starve another key's one.
   A tenant's own requests go in arrival order.
3. Ageing: a waiter is promoted one class for every `age_step_s` it has waited. Without it a steady
   stream of higher-priority work would hold a low-priority request until its queue's max_wait_s and
   a 503 (starved, in effect). Admission sets the step to a quarter of the queue's max_wait_s (AGE_FRACTION):
   a low request competes as normal after a quarter of its allowed wait and as high after half of it,
   so it is served during the second half unless the high class alone keeps the model full with many
   tenants, and even then it takes its turn in the rotation between them.

The rotation is remembered per tenant as the turn it was last served on (`Rotation`); only tenants with
requests waiting are kept, so its size is bounded by the queue's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from neuron.shared.protocol import PRIORITIES

LOW, NORMAL, HIGH = 0, 1, 2
RANKS = {name: HIGH - i for i, name in enumerate(PRIORITIES)}  # "high": 2, "normal": 1, "low": 0
NAMES = {rank: name for name, rank in RANKS.items()}
AGE_FRACTION = 0.25  # of the queue's max_wait_s: the wait that promotes a request one class
ANONYMOUS = ""  # the tenant of requests that name none (no gateway, or a gateway without keys)


@dataclass(frozen=True)
class Caller:
    """Who a request is for: its priority (LOW, NORMAL, HIGH) and tenant."""

    priority: int = NORMAL
    tenant: str = ANONYMOUS

    @property
    def priority_name(self) -> str:
        return NAMES[self.priority]


@dataclass(frozen=True)
class Waiter:
    """A request waiting for a slot: who it is for, when it arrived (a clock of the caller's choice) and
    its place in arrival order (ties of the clock)."""

    caller: Caller
    arrival: float
    seq: int


def effective_priority(waiter: Waiter, now: float, age_step_s: float) -> int:
    """Its priority after ageing: one class higher per `age_step_s` waited, HIGH at most (no ageing when
    the step is 0: such a queue lets nothing wait)."""
    if age_step_s <= 0:
        return waiter.caller.priority
    return min(HIGH, waiter.caller.priority + int((now - waiter.arrival) // age_step_s))


@dataclass
class Rotation:
    """The turn each tenant with requests waiting was last served on (absent: not lately)."""

    turn: int = 0
    last: dict[str, int] = field(default_factory=dict)

    def served(self, tenant: str, waiting: Collection[str]) -> None:
        """`tenant` was served now; `waiting` are the tenants still with requests queued (others are forgotten)."""
        self.turn += 1
        self.last = {t: n for t, n in self.last.items() if t in waiting}
        self.last[tenant] = self.turn


def next_waiter(waiters: Sequence[Waiter], now: float, rotation: Rotation, age_step_s: float) -> int:
    """The index in `waiters` (not empty) of the one to serve next.

    Admission passes only the oldest waiter of each (tenant, priority): the others of that queue arrived
    later with the same priority, so they can never rank above it."""
    ranks = [effective_priority(w, now, age_step_s) for w in waiters]
    top = max(ranks)
    return min((i for i, rank in enumerate(ranks) if rank == top),
               key=lambda i: (rotation.last.get(waiters[i].caller.tenant, 0), waiters[i].seq))
