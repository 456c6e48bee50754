"""Replicas (cortex_gateway/replicas.py): scale out, restore and scale in over snapshots, table-driven like the
router's; and the models file's and [scheduling]'s keys for them.

The effects (cortex_gateway/scaler.py) against real neurons are tests/test_gateway_replicas.py.
"""

from __future__ import annotations

import re

import pytest

from cortex_gateway import catalog_routes
from cortex_gateway.config import ConfigError, GatewayConfig, ModelProfile, NeuronSpec, load_config
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.replicas import (
    Bounds,
    Placement,
    ReplicaLoad,
    ReplicaUnload,
    above_floor,
    holding,
    replicas,
    reserve,
    restore_min,
    scale_in,
    scale_out,
    scale_outs,
    waiting_on,
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


@pytest.mark.parametrize("snapshot, waiting, bounds, expected", [
    # one replica, 4 waiting against scale_out_queue 4: n2 (fits, nothing to evict)
    ([N("n1", loaded="a"), N("n2")], {"n1": 4}, TWO, "n2"),
    ([N("n1", loaded="a"), N("n2")], {"n1": 3}, TWO, None),  # below the threshold
    ([N("n1", loaded="a"), N("n2")], {"n1": 9}, Bounds(0, 1), None),  # the default ceiling: one node
    # two replicas: 8 waiting in all are needed for a third; at the ceiling of 2, none
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 4, "n2": 3}, Bounds(0, 3), None),
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 4, "n2": 4}, Bounds(0, 3), "n3"),
    ([N("n1", loaded="a"), N("n2", loaded="a"), N("n3")], {"n1": 9, "n2": 9}, TWO, None),
    # only where it fits with no eviction: n2 full of an idle model is passed over for n3, and alone, none
    ([N("n1", loaded="a"), N("n2", loaded="b", free=20), N("n3")], {"n1": 4}, TWO, "n3"),
    ([N("n1", loaded="a"), N("n2", loaded="b", free=20)], {"n1": 4}, TWO, None),
    # not where it is not available, not on a node down; a load of it already under way: wait for it
    ([N("n1", loaded="a"), N("n2", avail=())], {"n1": 4}, TWO, None),
    ([N("n1", loaded="a"), N("n2", healthy=False)], {"n1": 4}, TWO, None),
    ([N("n1", loaded="a"), N("n2", loading="a"), N("n3")], {"n1": 4}, Bounds(0, 3), None),
    # loaded nowhere: a cold load's business, not a replica's
    ([N("n1"), N("n2")], {"n1": 9}, TWO, None),
    # the replica on a node down does not serve: n1 alone counts, n3 gets it (n2 holds it already)
    ([N("n1", loaded="a"), N("n2", loaded="a", healthy=False), N("n3")], {"n1": 4}, Bounds(0, 3), "n3"),
    # most free memory first among the rest
    ([N("n1", loaded="a"), N("n2", free=60), N("n3", free=90)], {"n1": 4}, TWO, "n3"),
])
def test_scale_out(snapshot, waiting, bounds, expected):
    got = scale_out("a", snapshot, waiting, bounds, 4, Placement())
    assert (got and got.node) == expected
    if got:
        assert got == ReplicaLoad("a", expected, "queue", sum(waiting.values()))


def test_scale_out_prefers_the_profiles_nodes():
    snapshot = [N("n1", loaded="a"), N("n2", free=90), N("n3", free=50)]
    got = scale_out("a", snapshot, {"n1": 4}, TWO, 4, Placement(preferred={"a": ["n3"]}))
    assert got.node == "n3"


def test_scale_outs_reserve_memory_and_skip_pending():
    """Two models wanting a replica where only one fits: the second sees the first's memory taken."""
    snapshot = [N("n1", loaded=("a", "b")), N("n2", free=50, avail=("a", "b"))]
    waiting = {"a": {"n1": 4}, "b": {"n1": 4}}
    bounds = {"a": TWO, "b": TWO}
    assert [d.model for d in scale_outs(snapshot, waiting, bounds, 4, Placement())] == ["a"]
    assert [d.model for d in scale_outs(snapshot, waiting, bounds, 4, Placement(), frozenset({"a"}))] == ["b"]


@pytest.mark.parametrize("snapshot, bounds, expected", [
    ([N("n1", free=50), N("n2", free=90)], {"a": Bounds(1, 1)}, [("a", "n2")]),  # pre-warm on the roomiest node
    ([N("n1", loaded="a"), N("n2")], {"a": Bounds(1, 1)}, []),  # at its floor
    ([N("n1", loaded="a"), N("n2")], {"a": Bounds(2, 2)}, [("a", "n2")]),
    ([N("n1", loaded="a", healthy=False), N("n2")], {"a": Bounds(1, 2)}, [("a", "n2")]),  # its node went down
    ([N("n1", loading="a"), N("n2")], {"a": Bounds(2, 2)}, []),  # one load at a time
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
