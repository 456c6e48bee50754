"""The swap-aware queue's decisions (cortex_gateway.swaps) over snapshots, table-driven as the router's are."""

from __future__ import annotations

import pytest

from cortex_gateway import swaps
from cortex_gateway.router import NodeView, plan_cold_load, waiting_helps
from cortex_gateway.swaps import Claim, Waiting

PLACE = {"strategy": "lru", "loadable_anywhere": False, "pinned": {}, "priorities": {}}


def node(name="n1", *, busy=None, resident=(), loaded=("a", "b"), last_used=None, free=0.0):
    """A node holding two 40 MiB models with no free memory; every model of the catalog needs 40 MiB."""
    return NodeView(name, True, free, {m: 40.0 for m in loaded}, available={m: 40.0 for m in "abcd"},
                    busy=busy or {}, last_used=last_used or {m: i for i, m in enumerate(loaded)},
                    resident=frozenset(resident))


def test_waiting_loads_are_tried_oldest_first():
    waiting = [Waiting("c", 5.0, 10.0), Waiting("a", 1.0, 9.0), Waiting("b", 5.0, 9.0)]
    assert [w.model for w in swaps.turn_order(waiting)] == ["a", "b", "c"]  # a tie goes by name: stable


@pytest.mark.parametrize(("loaded_at", "now", "residency", "expected"), [
    ({"a": 0.0, "b": 5.0}, 8.0, 10.0, {"a", "b"}),
    ({"a": 0.0, "b": 5.0}, 12.0, 10.0, {"b"}),
    ({"a": 0.0}, 10.0, 10.0, set()),  # ends exactly at min_residency_s
    ({"a": 0.0}, 1.0, 0.0, set()),  # 0: off
])
def test_residency(loaded_at, now, residency, expected):
    assert swaps.protected(loaded_at, now, residency) == expected


def test_a_resident_model_is_no_victim_and_waiting_for_it_helps():
    view = node(resident={"a", "b"})
    assert plan_cold_load("c", [view], preferred=[], **PLACE) == []
    assert waiting_helps("c", [view], **PLACE)  # residencies end


@pytest.mark.parametrize(("view", "claimed", "expected"), [
    # both busy: the least lately used is claimed
    (node(busy={"a": 1, "b": 2}), [], [Claim("n1", "a", "c")]),
    # the older one resident: the other is claimed although more lately used
    (node(busy={"a": 1, "b": 2}, resident={"a"}), [], [Claim("n1", "b", "c")]),
    # both resident: nothing to claim, only their residency ending helps
    (node(busy={"a": 1, "b": 1}, resident={"a", "b"}), [], []),
    # an idle victim: the plan is about to run, nothing to claim
    (node(busy={"b": 1}), [], []),
    # a victim another waiting load claimed is not claimed twice
    (node(busy={"a": 1, "b": 1}), [Claim("n1", "a", "d")], [Claim("n1", "b", "c")]),
])
def test_what_a_waiting_load_claims(view, claimed, expected):
    assert swaps.claim("c", [view], claimed, **PLACE) == expected


def test_a_pinned_model_is_never_claimed():
    view = node(busy={"a": 1, "b": 1})
    assert swaps.claim("c", [view], [], **{**PLACE, "pinned": {"a": {"n1"}, "b": {"n1"}}}) == []


def test_a_claimed_model_waits_for_its_return_on_that_node():
    claims = [Claim("n1", "a", "c"), Claim("n2", "b", "c")]
    assert swaps.holding_claimed("a", claims) == {"n1"}
    assert swaps.holding_claimed("c", claims) == frozenset()


@pytest.mark.parametrize(("busy", "last_used", "expected"), [
    ({"a": 1}, {"a": 0.0, "b": 0.0}, {"a", "c"}),  # a in flight; b idle since long before: not kept
    ({}, {"a": 95.0, "b": 50.0}, {"a", "c"}),  # a used within the window (10 s before now), b not
    ({"a": 1, "b": 2}, {}, {"a", "b", "c"}),
])
def test_a_swap_keeps_the_working_set(busy, last_used, expected):
    view = NodeView("n1", True, 0.0, {"a": 40.0, "b": 40.0, "c": 40.0}, busy=busy, last_used=last_used)
    assert swaps.working_set("c", view, now=100.0, window_s=30.0) == expected


def test_higher_priority_goes_first_and_waiting_ages_it():
    waiting = [Waiting("old-low", 0.0, 99.0, rank=2), Waiting("new-high", 8.0, 99.0, rank=0),
               Waiting("normal", 4.0, 99.0, rank=1)]
    assert [w.model for w in swaps.turn_order(waiting, now=9.0)] == ["new-high", "normal", "old-low"]
    # one class per age_s waited: after 10 s the low one ranks as normal (and is older); after 20 s everything
    # has aged to high, and the oldest goes first
    assert [w.model for w in swaps.turn_order(waiting, now=10.0, age_s=10.0)] == ["new-high", "old-low", "normal"]
    assert [w.model for w in swaps.turn_order(waiting, now=20.0, age_s=10.0)] == ["old-low", "normal", "new-high"]


def test_a_victim_serving_only_low_priority_work_is_claimed_first():
    view = node(busy={"a": 1, "b": 1})  # a is the least lately used
    assert swaps.claim("c", [view], [], **PLACE) == [Claim("n1", "a", "c")]
    assert swaps.claim("c", [view], [], low_only=frozenset({("n1", "b")}), **PLACE) == [Claim("n1", "b", "c")]
    # only low-priority work that cannot make room: the usual choice
    resident_b = node(busy={"a": 1, "b": 1}, resident={"b"})
    assert swaps.claim("c", [resident_b], [], low_only=frozenset({("n1", "b")}), **PLACE) == [Claim("n1", "a", "c")]
