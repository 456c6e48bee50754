"""Routing, eviction and gateway config: pure functions, tested without sockets."""

from __future__ import annotations

import pytest

from cortex_gateway.config import ConfigError, GatewayConfig, NeuronSpec, load_config, set_pin
from cortex_gateway.evictor import Resident, choose_victims
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.router import NodeView, next_victim, plan_cold_load, route_loaded
from neuron.shared.protocol import AvailableModel, DeviceInfo, Health, ModelInfo, ModelLoad


def R(model, mem=10.0, used=0.0, prio=100, pinned=False, busy=False):
    return Resident(model, mem, used, prio, pinned, busy)


@pytest.mark.parametrize("residents, need, strategy, expected", [
    ([R("a", used=2), R("b", used=1)], 5, "lru", ["b"]),
    ([R("a", used=2), R("b", used=1)], 15, "lru", ["b", "a"]),
    ([R("a", used=2), R("b", used=1)], 25, "lru", None),
    ([R("a", used=1, pinned=True), R("b", used=2)], 5, "lru", ["b"]),
    ([R("a", used=1, busy=True), R("b", used=2)], 5, "lru", ["b"]),
    ([R("a", used=1, prio=50), R("b", used=9, prio=10)], 5, "priority", ["b"]),
    ([R("a", used=1, prio=10), R("b", used=0, prio=10)], 5, "priority", ["b"]),
    ([R("a", pinned=True), R("b", busy=True)], 1, "lru", None),
    ([R("a")], 0, "lru", []),
])
def test_choose_victims(residents, need, strategy, expected):
    got = choose_victims(residents, need, strategy)
    assert (None if got is None else [r.model for r in got]) == expected


def N(name, free=100.0, loaded=None, available=None, busy=None, healthy=True, used=None):
    return NodeView(name, healthy, free, loaded or {}, frozenset(), available or {}, busy or {}, used or {})


def test_route_loaded_picks_least_busy_healthy_node():
    nodes = [N("a", loaded={"m": 10}, busy={"m": 3}), N("b", loaded={"m": 10}, busy={"m": 1}),
             N("c", loaded={"m": 10}, healthy=False)]
    assert route_loaded("m", nodes) == "b"
    assert route_loaded("m", nodes, exclude=frozenset({"b"})) == "a"
    assert route_loaded("x", nodes) is None


def plan(model, nodes, **kw):
    args = dict(strategy="lru", preferred=[], loadable_anywhere=False, pinned={}, priorities={})
    return [(p.node, p.evict) for p in plan_cold_load(model, nodes, **{**args, **kw})]


def test_a_stale_poll_does_not_make_an_idle_model_busy():
    """A poll taken while m2 answered still says m2 is in flight; the gateway, with nothing in flight,
    must evict m2 (least recently used), not m1. The bug: the polled figure counted as busy."""
    spec = NeuronSpec("n1", "http://127.0.0.1:9")
    fleet = Fleet([spec], session=None)
    node = fleet.nodes["n1"]
    node.healthy = True
    node.health = Health(devices=[DeviceInfo("cpu", total_mb=80, free_mb=14)],
                         models=[ModelLoad("m1"), ModelLoad("m2", in_flight=1)])
    node.models = {m: ModelInfo(m, memory_mb=33) for m in ("m1", "m2")}
    node.available = {m: AvailableModel(m, estimated_mb=33) for m in ("m1", "m2", "m3")}
    fleet.usage_of("n1", "m2").last_used, fleet.usage_of("n1", "m1").last_used = 1.0, 2.0
    lifecycle = Lifecycle(GatewayConfig(neurons=[spec]), fleet, GatewayMetrics())
    assert plan("m3", lifecycle.snapshot()) == [("n1", ("m2",))]
    fleet.usage_of("n1", "m2").in_flight = 1  # the gateway's own count is exact: then m2 is busy
    assert plan("m3", lifecycle.snapshot()) == [("n1", ("m1",))]


def test_cold_load_prefers_nodes_that_fit_then_free_memory():
    nodes = [N("a", free=50, available={"m": 40}), N("b", free=90, available={"m": 40}),
             N("c", free=5, available={"m": 40}, loaded={"old": 60})]
    assert plan("m", nodes) == [("b", ()), ("a", ()), ("c", ("old",))]


def test_cold_load_puts_profile_nodes_first_and_skips_unable_nodes():
    nodes = [N("a", free=90, available={"m": 40}), N("b", free=50, available={"m": 40}), N("c", free=99)]
    assert plan("m", nodes, preferred=["b"]) == [("b", ()), ("a", ())]
    # c has the most free memory but would fetch the model by path or hub id: local copies first.
    assert [n for n, _ in plan("m", nodes, loadable_anywhere=True)] == ["a", "b", "c"]


def test_cold_load_never_plans_to_evict_pinned_or_busy():
    nodes = [N("a", free=0, available={"m": 40}, loaded={"p": 50, "q": 50}, busy={"q": 1})]
    assert plan("m", nodes, pinned={"p": {"a"}}) == []
    assert plan("m", nodes) == [("a", ("p",))]


def test_next_victim_follows_the_strategy():
    node = N("a", loaded={"x": 10, "y": 10, "m": 10}, used={"x": 5, "y": 1, "m": 0})
    assert next_victim("m", node, strategy="lru", pinned={}, priorities={}) == "y"
    assert next_victim("m", node, strategy="priority", pinned={}, priorities={"x": 1}) == "x"
    assert next_victim("m", node, strategy="lru", pinned={"y": {"a"}, "x": {"a"}}, priorities={}) is None


@pytest.mark.parametrize("text, message", [
    ('[[neurons]]\nname = "a"\nendpoint = "10.0.0.1:13131"\n', "[[neurons]] #1.endpoint: expected an http(s) URL"),
    ('[[neurons]]\nname = "a"\nendpoint = "http://x:1"\n[[neurons]]\nname = "a"\nendpoint = "http://y:1"\n',
     "'a' is used by another neuron"),
    ('[gateway]\nlisten = 31313\n', "[gateway].listen: expected HOST:PORT"),
    ('[gateway]\npoll_interval_s = -1\n', "[gateway].poll_interval_s: expected a number of seconds > 0"),
    ('models_config = "missing.toml"\n', "missing.toml: cannot read"),
    ('[auth]\nadmin_keys = ["short"]\n', "[auth].admin_keys: expected strings of at least 8 characters"),
])
def test_bad_config_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "cortex.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(tmp_path)), "the error names the file"


def test_models_file_errors_name_the_entry(tmp_path):
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n')
    (tmp_path / "models.toml").write_text('[[models]]\nid = "a"\npriority = "high"\n')
    with pytest.raises(ConfigError, match=r"models.toml: \[\[models\]\] #1.priority: expected an integer"):
        load_config(tmp_path / "cortex.toml")


def test_set_pin_keeps_comments_and_is_reversible(tmp_path):
    path = tmp_path / "models.toml"
    original = '# fleet models\n[[models]]\nid = "a"  # keep me\npriority = 5\n\n[aliases]\nx = "a"\n'
    path.write_text(original)
    set_pin(path, "a", "beast", True)
    set_pin(path, "new", "beast", True)
    text = path.read_text()
    assert "# fleet models" in text and "# keep me" in text and 'pinned_on = ["beast"]' in text
    assert 'id = "new"' in text
    set_pin(path, "a", "beast", False)
    assert 'pinned_on = []' in path.read_text()
    assert not list(tmp_path.glob(".models.toml.*")), "no temporary file left behind"
