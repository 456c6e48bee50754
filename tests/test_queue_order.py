"""The order a model's waiting requests are served in (neuron.engine.queue_order), decided on tables with a
clock passed in; then Admission handing its slot over in that order, driven by hand in one event loop."""

from __future__ import annotations

import asyncio

import pytest

from neuron.engine.admission import Admission
from neuron.engine.queue_order import HIGH, LOW, NORMAL, Caller, Rotation, Waiter, effective_priority, next_waiter
from neuron.shared.config import AdmissionLimits
from neuron.shared.errors import ApiError

P = {"h": HIGH, "n": NORMAL, "l": LOW}


def waiters(spec: str, arrivals: list[float] | None = None) -> list[Waiter]:
    """'l:a n:b' -> a low waiter of tenant a, then a normal one of b, arriving at 0, 1, ... unless given."""
    out = []
    for i, word in enumerate(spec.split()):
        priority, tenant = word.split(":")
        out.append(Waiter(Caller(P[priority], tenant), arrivals[i] if arrivals else float(i), i))
    return out


def order(spec: str, *, now: float = 100.0, age_step_s: float = 1000.0, served: tuple[str, ...] = (),
          arrivals: list[float] | None = None) -> list[str]:
    """Serve every waiter of `spec` one by one (the rotation remembering each), as 'priority:tenant#index'."""
    left, rotation, out = waiters(spec, arrivals), Rotation(), []
    for tenant in served:
        rotation.served(tenant, {w.caller.tenant for w in left})
    while left:
        w = left.pop(next_waiter(left, now, rotation, age_step_s))
        rotation.served(w.caller.tenant, {x.caller.tenant for x in left})
        out.append(f"{w.caller.priority_name[0]}:{w.caller.tenant}#{w.seq}")
    return out


@pytest.mark.parametrize("spec, expected", [
    # one tenant, one class: FIFO, as before
    ("n:a n:a n:a", ["n:a#0", "n:a#1", "n:a#2"]),
    # classes first, whatever the arrival
    ("l:a l:a n:b h:c", ["h:c#3", "n:b#2", "l:a#0", "l:a#1"]),
    ("l:a h:a", ["h:a#1", "l:a#0"]),  # a tenant's high request passes its own low one
    # one class: tenants take turns, each tenant FIFO; the first turn to the earliest arrival
    ("n:a n:a n:a n:a n:a n:a n:b", ["n:a#0", "n:b#6", "n:a#1", "n:a#2", "n:a#3", "n:a#4", "n:a#5"]),
    ("n:a n:a n:b n:b n:c", ["n:a#0", "n:b#2", "n:c#4", "n:a#1", "n:b#3"]),
    # turns are per class: the high tenants rotate, then the normal ones
    ("n:x n:x n:y h:a h:a h:b", ["h:a#3", "h:b#5", "h:a#4", "n:x#0", "n:y#2", "n:x#1"]),
])
def test_the_order_of_a_queue(spec, expected):
    assert order(spec) == expected


def test_a_tenant_served_lately_waits_for_one_that_was_not():
    """The slot was last given to a (say, free at once): b, which has not had a turn, goes first."""
    assert order("n:a n:a n:b", served=("a",)) == ["n:b#2", "n:a#0", "n:a#1"]


@pytest.mark.parametrize("priority, waited, step, expected", [
    (LOW, 0.0, 10.0, LOW),
    (LOW, 9.99, 10.0, LOW),
    (LOW, 10.0, 10.0, NORMAL),  # one class per step waited
    (LOW, 25.0, 10.0, HIGH),
    (LOW, 500.0, 10.0, HIGH),  # never above high
    (NORMAL, 10.0, 10.0, HIGH),
    (HIGH, 0.0, 10.0, HIGH),
    (LOW, 500.0, 0.0, LOW),  # a queue that lets nothing wait does not age
])
def test_ageing_promotes_one_class_per_step(priority, waited, step, expected):
    w = Waiter(Caller(priority, "t"), arrival=1000.0, seq=0)
    assert effective_priority(w, 1000.0 + waited, step) == expected


def test_an_old_low_request_overtakes_new_normal_ones():
    """Arrived at 0 and promoted at 10 (step 10), the low request competes with the normal ones that came at
    11 and 12 as one of them, and came first; until then they go before it."""
    spec, arrivals = "l:old n:a n:b", [0.0, 11.0, 12.0]
    assert order(spec, now=13.0, age_step_s=10.0, arrivals=arrivals)[0] == "l:old#0"
    assert order(spec, now=9.0, age_step_s=10.0, arrivals=[0.0, 1.0, 2.0]) == ["n:a#1", "n:b#2", "l:old#0"]


def test_a_starved_low_request_reaches_the_top_and_takes_its_turn_there():
    """High tenants keep coming; after two steps the low request is high too and gets a turn in the rotation."""
    spec, arrivals = "l:low h:a h:b h:a", [0.0, 19.0, 19.5, 19.8]
    assert order(spec, now=20.0, age_step_s=10.0, arrivals=arrivals)[0] == "l:low#0"


def test_the_rotation_forgets_tenants_with_nothing_waiting():
    rotation = Rotation()
    for tenant in ("a", "b", "c"):
        rotation.served(tenant, {"a", "b", "c"})
    rotation.served("d", {"c"})
    assert rotation.last == {"c": 3, "d": 4}


# -- Admission: the slot handed over in that order -------------------------------------------------
async def served_order(adm: Admission, callers: list[tuple[str, Caller]]) -> list[str]:
    """Hold the only slot, queue `callers` one by one (each seen queued before the next), then release:
    the order they get the slot in."""
    order_seen: list[str] = []
    release = asyncio.Event()

    async def user(name: str, caller: Caller, hold: bool = False) -> None:
        async with adm.slot(caller=caller):
            order_seen.append(name)
            if hold:
                await release.wait()

    tasks = [asyncio.create_task(user("holder", Caller(), hold=True))]
    await asyncio.sleep(0)
    for i, (name, caller) in enumerate(callers):
        tasks.append(asyncio.create_task(user(name, caller)))
        while adm.queue_depth < i + 1:
            await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert adm.in_flight == 0 and adm.queue_depth == 0
    return order_seen[1:]


async def test_admission_serves_high_before_a_low_queue():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=8, max_wait_s=60))
    callers = [(f"low{i}", Caller(LOW, "l")) for i in range(3)] + [("high", Caller(HIGH, "h"))]
    assert await served_order(adm, callers) == ["high", "low0", "low1", "low2"]


async def test_admission_rotates_between_tenants():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=8, max_wait_s=60))
    callers = [(f"a{i}", Caller(NORMAL, "a")) for i in range(6)] + [("b", Caller(NORMAL, "b"))]
    assert await served_order(adm, callers) == ["a0", "b", "a1", "a2", "a3", "a4", "a5"]


async def test_a_full_queue_refuses_a_high_request_too():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=1, max_wait_s=600))
    async with adm.slot():
        waiting = asyncio.ensure_future(adm.slot(caller=Caller(LOW, "a")).__aenter__())
        while adm.queue_depth < 1:
            await asyncio.sleep(0)
        with pytest.raises(ApiError) as full:
            async with adm.slot(caller=Caller(HIGH, "b")):
                pass
        assert full.value.status == 429 and full.value.code == "queue_full"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert adm.queue_depth == 0
    assert adm.in_flight == 0


async def test_a_waiter_that_times_out_leaves_no_trace():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=4, max_wait_s=0.05))
    async with adm.slot():
        with pytest.raises(ApiError) as timed_out:
            async with adm.slot(caller=Caller(HIGH, "a")):
                pass
        assert timed_out.value.status == 503 and timed_out.value.code == "queue_timeout"
        assert adm.queue_depth == 0 and adm._queues == {}
    assert adm.in_flight == 0
