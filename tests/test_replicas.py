"""Replicas (cortex_gateway/replicas.py): scale out (how many at once), restore, scale in and holding a request
over snapshots, table-driven like the router's; and the models file's and [scheduling]'s keys for them.

The effects (cortex_gateway/scaler.py) against real neurons are tests/test_gateway_replicas.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from cortex_gateway import catalog_routes
from cortex_gateway.config import ConfigError, GatewayConfig, ModelProfile, NeuronSpec, load_config
from cortex_gateway.fleet import Fleet
from cortex_gateway.hold import Hold, Holds
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.replicas import (
    Bounds,
    Placement,
    ReplicaLoad,
    ReplicaUnload,
    above_floor,
    holding,
    holds,
    replicas,
    reserve,
    reserve_all,
    restore_min,
    scale_in,
    scale_out,
    scale_outs,
    waiting_on,
    wanted,
)
from cortex_gateway.router import NodeView
from cortex_gateway.scaler import Replicas
from neuron.shared.protocol import ModelInfo
from tests.test_metric_names import by, samples

NOW = 1000.0
TWO = Bounds(0, 2)


def N(name, loaded=(), free=100.0, avail=("a",), busy=None, used=None, healthy=True, loading=()):
    """A node with `loaded` models (10 MiB each), `avail` loadable at 40 MiB each, `free` MiB free."""
    return NodeView(name, healthy, free, {m: 10.0 for m in loaded}, frozenset(loading), {m: 40.0 for m in avail},
                    busy or {}, used or {})


@pytest.mark.parametrize("in_flight, slots, queued, expected", [
    (6, 4, 0, 2),  # two beyond the four slots
    (3, 4, 0, 0),  # free slots: nothing waits
    (3, 4, 5, 5),  # the node queues more (requests from elsewhere): its figure
    (9, 0, 1, 1),  # slots not reported: only the node's queue counts
    (0, 0, 0, 0),
])
def test_waiting_on(in_flight, slots, queued, expected):
    assert waiting_on(in_flight, slots, queued) == expected


@pytest.mark.parametrize("waiting, serving, loading, ceiling, expected", [
    (4, 1, 0, 4, 1),  # one replica with 4 waiting (scale_out_queue 4): one more, as one at a time did
    (3, 1, 0, 4, 0),  # below the threshold
    (8, 1, 0, 4, 2),  # enough for two more at once: each replica then has 4 waiting
    (12, 1, 0, 4, 3),
    (40, 1, 0, 4, 3),  # the ceiling
    (8, 1, 1, 4, 1),  # one is loading already: it counts
    (4, 1, 1, 4, 0),
    (8, 2, 0, 4, 1),  # two replicas: a third at 8 waiting, as before
    (7, 2, 0, 4, 0),
    (9, 1, 0, 1, 0),  # the default ceiling: one node
    (0, 3, 0, 2, 0),  # above the ceiling (an operator's loads): never negative
])
def test_wanted(waiting, serving, loading, ceiling, expected):
    assert wanted(waiting, serving, loading, 4, ceiling) == expected


@pytest.mark.parametrize("in_flight, slots, coming, expected", [
    (8, 4, True, True),  # 4 running, 4 waiting (scale_out_queue 4), a replica loading: the next waits here
    (9, 4, True, True),
    (7, 4, True, False),  # room for one more in its queue: sent there
    (8, 4, False, False),  # nothing coming: queued on the node, as with one node
    (8, 0, True, False),  # slots not reported: never held
    (0, 4, True, False),
])
def test_holds(in_flight, slots, coming, expected):
    assert holds(in_flight, slots, 4, coming) is expected


@pytest.mark.parametrize("snapshot, waiting, bounds, expected", [
    # one replica, 4 waiting against scale_out_queue 4: n2 (fits, nothing to evict)
    ([N("n1", loaded="a"), N("n2")], {"n1": 4}, TWO, ["n2"]),
    ([N("n1", loaded="a"), N("n2")], {"n1": 3}, TWO, []),  # below the threshold
    ([N("n1", loaded="a"), N("n2")], {"n1": 9}, Bounds(0, 1), []),  # the default ceiling: one node
    # two replicas: 8 waiting in all are needed for a third; at the ceiling of 2, none
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 4, "n2": 3}, Bounds(0, 3), []),
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 4, "n2": 4}, Bounds(0, 3), ["n3"]),
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 9, "n2": 9}, TWO, []),
    # only where it fits with no eviction: n2 full of an idle model is passed over for n3, and alone, none
    ([N("n1", loaded="a"), N("n2", loaded="b", free=20), N("n3")], {"n1": 4}, TWO, ["n3"]),
    ([N("n1", loaded="a"), N("n2", loaded="b", free=20)], {"n1": 4}, TWO, []),
    # not where it is not available, not on a node down
    ([N("n1", loaded="a"), N("n2", avail=())], {"n1": 4}, TWO, []),
    ([N("n1", loaded="a"), N("n2", healthy=False)], {"n1": 4}, TWO, []),
    # a load of it under way counts as a replica coming: 4 waiting justify no third, 8 do (elsewhere)
    ([N("n1", loaded="a"), N("n2", loading="a"), N("n3")], {"n1": 4}, Bounds(0, 3), []),
    ([N("n1", loaded="a"), N("n2", loading="a"), N("n3")], {"n1": 8}, Bounds(0, 3), ["n3"]),
    # loaded nowhere: a cold load's business, not a replica's
    ([N("n1"), N("n2")], {"n1": 9}, TWO, []),
    # the replica on a node down does not serve: n1 alone counts, n3 gets it (n2 holds it already)
    ([N("n1", loaded="a"), N("n2", loaded="a", healthy=False), N("n3")], {"n1": 4}, Bounds(0, 3), ["n3"]),
    # most free memory first among the rest
    ([N("n1", loaded="a"), N("n2", free=60), N("n3", free=90)], {"n1": 4}, TWO, ["n3"]),
    # as many at once as the queue justifies, on different nodes, the roomiest first
    ([N("n1", loaded="a"), N("n2", free=60), N("n3", free=90), N("n4", free=70)], {"n1": 12}, Bounds(0, 4),
     ["n3", "n4", "n2"]),
    ([N("n1", loaded="a"), N("n2", free=60), N("n3", free=90), N("n4", free=70)], {"n1": 8}, Bounds(0, 4),
     ["n3", "n4"]),
    ([N("n1", loaded="a"), N("n2", free=60), N("n3", free=90), N("n4", free=70)], {"n1": 40}, Bounds(0, 3),
     ["n3", "n4"]),  # the ceiling
    ([N("n1", loaded="a"), N("n2"), N("n3", avail=())], {"n1": 12}, Bounds(0, 4), ["n2"]),  # as many as fit
    # two fit on one node's memory but a node holds one replica: n2 once
    ([N("n1", loaded="a"), N("n2", free=100)], {"n1": 12}, Bounds(0, 4), ["n2"]),
])
def test_scale_out(snapshot, waiting, bounds, expected):
    got = scale_out("a", snapshot, waiting, bounds, 4, Placement())
    assert [d.node for d in got] == expected
    assert all(d == ReplicaLoad("a", d.node, "queue", sum(waiting.values())) for d in got)


@pytest.mark.parametrize("waiting, held, expected", [
    ({"n1": 4}, 0, ["n3"]),
    ({"n1": 0}, 4, ["n3"]),  # requests held in the gateway are waiting demand too
    ({"n1": 4}, 4, ["n3", "n2"]),
    ({"n1": 1}, 2, []),
])
def test_scale_out_counts_held_requests(waiting, held, expected):
    snapshot = [N("n1", loaded="a"), N("n2", free=60), N("n3", free=90)]
    got = scale_out("a", snapshot, waiting, Bounds(0, 3), 4, Placement(), held)
    assert [d.node for d in got] == expected
    assert all(d.waiting == sum(waiting.values()) + held for d in got)


def test_scale_out_prefers_the_profiles_nodes():
    snapshot = [N("n1", loaded="a"), N("n2", free=90), N("n3", free=50)]
    [got] = scale_out("a", snapshot, {"n1": 4}, TWO, 4, Placement(preferred={"a": ["n3"]}))
    assert got.node == "n3"


def test_scale_outs_reserve_memory_and_skip_pending():
    """Two models wanting a replica where only one fits: the second sees the first's memory taken."""
    snapshot = [N("n1", loaded=("a", "b")), N("n2", free=50, avail=("a", "b"))]
    waiting = {"a": {"n1": 4}, "b": {"n1": 4}}
    bounds = {"a": TWO, "b": TWO}
    assert [d.model for d in scale_outs(snapshot, waiting, bounds, 4, Placement())] == ["a"]
    assert [d.model for d in scale_outs(snapshot, waiting, bounds, 4, Placement(), frozenset({"a"}))] == ["b"]
    got = scale_outs(snapshot, {"a": {"n1": 0}, "b": {"n1": 4}}, bounds, 4, Placement(), held={"a": 4})
    assert [d.model for d in got] == ["a"], "a's held requests count; b finds n2's memory taken"


@pytest.mark.parametrize("snapshot, bounds, expected", [
    ([N("n1", free=50), N("n2", free=90)], {"a": Bounds(1, 1)}, [("a", "n2")]),  # pre-warm on the roomiest node
    ([N("n1", free=50), N("n2", free=90)], {"a": Bounds(2, 2)}, [("a", "n2"), ("a", "n1")]),  # both at once
    ([N("n1", loaded="a"), N("n2")], {"a": Bounds(1, 1)}, []),  # at its floor
    ([N("n1", loaded="a"), N("n2")], {"a": Bounds(2, 2)}, [("a", "n2")]),
    ([N("n1", loaded="a", healthy=False), N("n2")], {"a": Bounds(1, 2)}, [("a", "n2")]),  # its node went down
    ([N("n1", loading="a"), N("n2")], {"a": Bounds(1, 2)}, []),  # the one loading counts
    ([N("n1", loading="a"), N("n2")], {"a": Bounds(2, 2)}, [("a", "n2")]),
    ([N("n1", loaded="b", free=20)], {"a": Bounds(1, 1)}, []),  # only with nothing evicted
    ([N("n1"), N("n2")], {"a": Bounds(0, 2)}, []),  # no floor
    # two models, room for one on n1: the second waits for a later round (memory reserved)
    ([N("n1", free=50, avail=("a", "b"))], {"a": Bounds(1, 1), "b": Bounds(1, 1)}, [("a", "n1")]),
])
def test_restore_min(snapshot, bounds, expected):
    got = restore_min(snapshot, bounds, Placement())
    assert [(d.model, d.node) for d in got] == expected
    assert all(d.reason == "min_replicas" for d in got)


def test_restore_min_skips_a_model_the_gateway_is_loading():
    assert restore_min([N("n1")], {"a": Bounds(1, 1)}, Placement(), frozenset({"a"})) == []


def idle(*nodes_used: tuple[str, float], busy=(), healthy=True) -> list[NodeView]:
    return [N(n, loaded="a", used={"a": t}, busy={"a": 1} if n in busy else {}, healthy=healthy)
            for n, t in nodes_used]


@pytest.mark.parametrize("snapshot, bounds, pinned, expected", [
    # two replicas, both idle past 60 s: the least lately used goes, the other stays
    (idle(("n1", NOW - 100), ("n2", NOW - 200)), TWO, {}, ["n2"]),
    (idle(("n1", NOW - 100), ("n2", NOW - 30)), TWO, {}, ["n1"]),  # n2 used lately, n1 idle
    (idle(("n1", NOW - 30), ("n2", NOW - 30)), TWO, {}, []),  # neither idle long enough
    (idle(("n1", NOW - 60)), TWO, {}, []),  # never the last one
    (idle(("n1", NOW - 100), ("n2", NOW - 200)), Bounds(0, 1), {}, []),  # one allowed: never scaled in
    (idle(("n1", NOW - 100), ("n2", NOW - 200)), Bounds(2, 3), {}, []),  # at its floor
    (idle(("n1", NOW - 100), ("n2", NOW - 200), ("n3", NOW - 300)), Bounds(2, 3), {}, ["n3"]),
    (idle(("n1", NOW - 100), ("n2", NOW - 200), ("n3", NOW - 300)), Bounds(0, 3), {}, ["n3", "n2"]),
    # a pinned or busy replica is kept, and counts among those kept
    (idle(("n1", NOW - 100), ("n2", NOW - 200)), TWO, {"a": {"n2"}}, ["n1"]),
    (idle(("n1", NOW - 100), ("n2", NOW - 200), busy=("n2",)), TWO, {}, ["n1"]),
    (idle(("n1", NOW - 100), ("n2", NOW - 200)), TWO, {"a": {"n1", "n2"}}, []),
    # replicas on nodes down do not serve: the one left is the last
    ([*idle(("n1", NOW - 100)), *idle(("n2", NOW - 200), healthy=False)], TWO, {}, []),
])
def test_scale_in(snapshot, bounds, pinned, expected):
    got = scale_in(snapshot, {"a": bounds}, pinned, 60.0, NOW)
    assert [d.node for d in got] == expected
    assert all(isinstance(d, ReplicaUnload) and d.idle_s >= 60 for d in got)


@pytest.mark.parametrize("unloads, floors, expected", [
    ([("n1", "a"), ("n2", "a")], {}, [("n1", "a"), ("n2", "a")]),  # no floor: all of them
    ([("n1", "a"), ("n2", "a")], {"a": 1}, [("n1", "a")]),  # one of two, in order: the last stays
    ([("n1", "a"), ("n2", "a")], {"a": 2}, []),
    ([("n1", "a"), ("n1", "b")], {"a": 1}, [("n1", "a"), ("n1", "b")]),  # b has no floor; a has two replicas
])
def test_above_floor(unloads, floors, expected):
    """The keep-alive's unloads never take a model below its min_replicas (a and b on n1, a on n2 too)."""
    snapshot = [N("n1", loaded=("a", "b")), N("n2", loaded="a")]
    got = above_floor([ReplicaUnload(m, n, 99.0) for n, m in unloads], snapshot, floors)
    assert [(d.node, d.model) for d in got] == expected


def test_holding_replicas_and_reserve():
    snapshot = [N("n1", loaded="a"), N("n2", loading="a"), N("n3", loaded="a", healthy=False), N("n4")]
    assert holding("a", snapshot) == {"n1", "n2", "n3"}
    assert [v.name for v in replicas("a", snapshot)] == ["n1"]
    after = reserve(snapshot, ReplicaLoad("a", "n4", "queue"))
    assert after[3].free_mb == 60.0 and "a" in after[3].loading and after[:3] == snapshot[:3]
    both = reserve_all(snapshot, [ReplicaLoad("a", "n4", "queue"), ReplicaLoad("b", "n4", "queue")])
    assert both[3].loading == {"a", "b"} and both[3].free_mb == 60.0, "b is not available there: no memory"


# -- config ---------------------------------------------------------------------------------------------
def write(tmp_path, scheduling: str = "", models: str = ""):
    (tmp_path / "models.toml").write_text(f'[[models]]\nid = "a"\n{models}\n')
    path = tmp_path / "cortex.toml"
    path.write_text(f'models_config = "models.toml"\n[scheduling]\n{scheduling}\n')
    return path


def test_defaults_are_todays_behaviour(tmp_path):
    config = load_config(write(tmp_path))
    assert (config.models["a"].max_replicas, config.models["a"].min_replicas) == (1, 0)
    assert (config.scheduling.scale_out_queue, config.scheduling.replica_idle_s) == (4, 300.0)


def test_keys_are_read(tmp_path):
    config = load_config(write(tmp_path, "scale_out_queue = 1\nreplica_idle_s = 1", "max_replicas = 3\n"
                               "min_replicas = 2"))
    assert (config.models["a"].max_replicas, config.models["a"].min_replicas) == (3, 2)
    assert (config.scheduling.scale_out_queue, config.scheduling.replica_idle_s) == (1, 1.0)


@pytest.mark.parametrize("scheduling, models, message", [
    ("scale_out_queue = 0", "", "[scheduling].scale_out_queue: expected an integer >= 1"),
    ("replica_idle_s = 0", "", "[scheduling].replica_idle_s: expected a number of seconds > 0"),
    ("", "max_replicas = 0", "max_replicas: expected an integer from 1 to 1024, got 0"),
    ("", "min_replicas = -1", "min_replicas: expected an integer from 0 to 1024, got -1"),
    ("", "max_replicas = 2\nmin_replicas = 3", "min_replicas: 3 is more than max_replicas (2)"),
])
def test_bad_keys_are_refused_by_name(tmp_path, scheduling, models, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, scheduling, models))


# -- metrics --------------------------------------------------------------------------------------------
def test_replicas_gauge_and_zero_scale_series():
    """cortex_replicas counts the nodes taking requests with the model loaded; the scale events of a model
    with replicas to manage exist at 0 before the first, and no other model gets them."""
    specs = [NeuronSpec(n, f"http://127.0.0.1:{9 + i}") for i, n in enumerate(("n1", "n2", "n3"))]
    fleet = Fleet(specs, session=None)
    for name in ("n1", "n2", "n3"):
        fleet.nodes[name].healthy = True
        fleet.nodes[name].models = {"a": ModelInfo("a"), "b": ModelInfo("b")} if name != "n3" else {}
    fleet.nodes["n2"].draining = True
    config = GatewayConfig(neurons=specs, models={"a": ModelProfile("a", max_replicas=3)})
    metrics = GatewayMetrics()
    lifecycle = Lifecycle(config, fleet, metrics)
    scaler = Replicas(lifecycle)
    metrics.watch_fleet(fleet, lambda: catalog_routes.catalog(fleet, lifecycle), replicated=frozenset(scaler.bounds))
    got = samples(metrics)
    assert by(got["cortex_replicas"], "model") == {"a": 1, "b": 1}, "n2 is draining, n3 has neither"
    scale = {(dict(k)["model"], dict(k)["direction"], dict(k)["reason"]): v
             for k, v in got["cortex_scale_events_total"].items()}
    assert scale == {("a", "out", "queue"): 0, ("a", "out", "min_replicas"): 0, ("a", "in", "idle"): 0}


# -- a held request (cortex_gateway/hold.py), its events driven by hand -----------------------------------
class FakeNode:
    def __init__(self, name: str):
        self.name = name


async def test_a_held_request_waits_for_a_change_then_goes_where_the_choice_says():
    """Held while `recheck` says so; each `changed` of its model makes it look again, another model's does
    not; it is counted held meanwhile (waiting demand for the scaler), and not after."""
    holds = Holds(max_wait_s=600)
    full, choice = {"n1"}, [FakeNode("n1")]
    hold = Hold(holds, "a", lambda node: node.name in full)
    placing = asyncio.ensure_future(hold.placed(lambda: choice[0]))
    await asyncio.sleep(0)
    assert holds.count("a") == 1 and not placing.done()
    holds.changed("b")
    holds.changed("a")  # a request ended, n1 still full: it looks and waits on
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not placing.done() and holds.count("a") == 1
    choice[0] = FakeNode("n2")  # the new replica is up and the least busy
    holds.changed("a")
    assert (await placing).name == "n2"
    assert holds.count("a") == 0


async def test_a_held_request_goes_at_max_wait_and_a_cancelled_one_is_not_counted():
    holds = Holds(max_wait_s=0.01)
    hold = Hold(holds, "a", lambda node: True)  # always full: only the deadline ends it
    assert (await hold.placed(lambda: FakeNode("n1"))).name == "n1"
    holds = Holds(max_wait_s=600)
    placing = asyncio.ensure_future(Hold(holds, "a", lambda node: True).placed(lambda: FakeNode("n1")))
    await asyncio.sleep(0)
    assert holds.count("a") == 1
    placing.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await placing
    assert holds.count("a") == 0 and not holds._changes


async def test_a_held_stream_gets_keepalives_until_it_is_placed():
    holds, waits = Holds(max_wait_s=600), []

    async def keepalive(waiting: asyncio.Future) -> None:
        waits.append(waiting)
        await asyncio.wait({waiting})

    placing = asyncio.ensure_future(Hold(holds, "a", lambda node: False).placed(lambda: None, keepalive))
    await asyncio.sleep(0)
    holds.changed("a")
    assert await placing is None, "the model is served nowhere now: the caller places it as a cold request"
    assert len(waits) == 1
