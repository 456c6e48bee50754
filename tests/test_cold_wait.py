"""When a cold load has no plan: wait for busy models to idle (`router.waiting_helps`), or refuse at once a model
too big for every node (`router.never_fits`). Pure functions over snapshots, table-driven like the router's."""

from __future__ import annotations

import pytest

from cortex_gateway.router import NodeView, TooBig, never_fits, waiting_helps


def N(name, free=0.0, loaded=None, available=None, busy=None, healthy=True, loading=()):
    return NodeView(name, healthy, free, loaded or {}, frozenset(loading), available or {}, busy or {}, {})


FULL = {"a": 40.0, "b": 40.0}  # two models loaded, no memory free
PIN_A = {"a": {"n1"}}


@pytest.mark.parametrize("nodes, pinned, anywhere, exclude, expected", [
    # Both residents busy: once either idles, it can go.
    ([N("n1", loaded=FULL, available={"c": 40}, busy={"a": 1, "b": 2})], {}, False, (), True),
    # One busy, the other pinned: the busy one idles in time.
    ([N("n1", loaded=FULL, available={"c": 40}, busy={"b": 1})], PIN_A, False, (), True),
    # Both needed, one of them pinned: waiting for the busy one does not make room.
    ([N("n1", loaded=FULL, available={"c": 60}, busy={"b": 1})], PIN_A, False, (), False),
    # Only pinned models in the way: nothing to wait for.
    ([N("n1", loaded=FULL, available={"c": 40})], {"a": {"n1"}, "b": {"n1"}}, False, (), False),
    # Bigger than the node with everything evicted: waiting never helps.
    ([N("n1", loaded=FULL, available={"c": 100}, busy={"a": 1, "b": 1})], {}, False, (), False),
    # The only node that offers it is down, or excluded (it failed just now).
    ([N("n1", loaded=FULL, available={"c": 40}, busy={"a": 1}, healthy=False)], {}, False, (), False),
    ([N("n1", loaded=FULL, available={"c": 40}, busy={"a": 1})], {}, False, ("n1",), False),
    # A node that does not list it counts only for a model loadable anywhere (a profile path or source).
    ([N("n1", loaded=FULL, busy={"a": 1})], {}, False, (), False),
    ([N("n1", loaded=FULL, busy={"a": 1})], {}, True, (), True),
    # A second node full of pins aside, the first one's busy model makes waiting worth it.
    ([N("n0", loaded=FULL, available={"c": 40}), N("n1", loaded=FULL, available={"c": 40}, busy={"a": 1})],
     {"a": {"n0", "n1"}, "b": {"n0", "n1"}}, False, (), False),
    ([N("n0", loaded=FULL, available={"c": 40}), N("n1", loaded=FULL, available={"c": 40}, busy={"a": 1})],
     {"a": {"n0"}, "b": {"n0", "n1"}}, False, (), True),
])
def test_waiting_helps(nodes, pinned, anywhere, exclude, expected):
    assert waiting_helps("c", nodes, strategy="lru", loadable_anywhere=anywhere, pinned=pinned, priorities={},
                         exclude=frozenset(exclude)) is expected


@pytest.mark.parametrize("nodes, anywhere, exclude, expected", [
    # Fits once the (busy) residents go: not refused.
    ([N("n1", loaded=FULL, available={"c": 80}, busy={"a": 1})], False, (), None),
    # More than the whole node: refused with the figures.
    ([N("n1", free=10, loaded=FULL, available={"c": 100})], False, (), TooBig(100, "n1", 90)),
    # Within the node's memory, only pins in the way: not this refusal (a pin can be lifted; the 503 says so).
    ([N("n1", loaded=FULL, available={"c": 60})], False, (), None),
    # Two nodes too small: the figures of the one that comes closest.
    ([N("n1", free=50, available={"c": 100}), N("n2", free=70, available={"c": 100})], False, (),
     TooBig(100, "n2", 70)),
    # One node big enough among small ones: it may be placed (or waited for).
    ([N("n1", free=50, available={"c": 100}), N("n2", free=70, loaded=FULL, available={"c": 100})], False, (),
     None),
    # Unsure means no refusal: a node loading something (memory unknown), or one that does not list the model.
    ([N("n1", free=10, available={"c": 100}, loading=("a",))], False, (), None),
    ([N("n1", free=10, available={"c": 100}), N("n2", free=10)], True, (), None),
    # No candidate at all (down, excluded): another error says so, not this one.
    ([N("n1", free=10, available={"c": 100}, healthy=False)], False, (), None),
    ([N("n1", free=10, available={"c": 100})], False, ("n1",), None),
    # The down node would have held it; the healthy one never can.
    ([N("n1", free=500, available={"c": 100}, healthy=False), N("n2", free=10, available={"c": 100})], False,
     (), TooBig(100, "n2", 10)),
])
def test_never_fits(nodes, anywhere, exclude, expected):
    assert never_fits("c", nodes, loadable_anywhere=anywhere, exclude=frozenset(exclude)) == expected
