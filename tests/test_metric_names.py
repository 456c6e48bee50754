"""The gateway's fleet gauges and its metric names, rendered in process: no Prometheus, no sockets.

tests/test_prometheus.py proves the same against a real Prometheus where one is installed; these run
everywhere, so the gauges the alerts stand on (cortex_model_healthy_nodes, the zero series of rare
events) and the naming rules are checked in every CI run.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from cortex_gateway import catalog_routes
from cortex_gateway.config import GatewayConfig, ModelProfile, NeuronSpec
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics, RequestRecord
from neuron.shared.protocol import AvailableModel, DeviceInfo, Health, ModelInfo


def a_fleet():
    """n1 (up) has a loaded and b on disk; n2 (up, draining) has b; n3 (down) has c. Profile p loads by path
    anywhere; alias "fast" names a."""
    specs = [NeuronSpec(n, f"http://127.0.0.1:{9 + i}") for i, n in enumerate(("n1", "n2", "n3"))]
    fleet = Fleet(specs, session=None)
    n1, n2, n3 = (fleet.nodes[n] for n in ("n1", "n2", "n3"))
    n1.healthy = n2.healthy = True
    n2.draining = True
    n1.health = Health(devices=[DeviceInfo("cuda:0", kind="cuda", total_mb=1024, free_mb=256, used_mb=768)])
    n1.models = {"a": ModelInfo("a", memory_mb=700)}
    n1.available = {m: AvailableModel(m) for m in ("a", "b")}
    n2.available = {"b": AvailableModel("b")}
    n3.available = {"c": AvailableModel("c")}
    config = GatewayConfig(neurons=specs, models={"p": ModelProfile("p", path="/models/p.gguf")},
                           aliases={"fast": "a"}, strategy="priority")
    metrics = GatewayMetrics()
    lifecycle = Lifecycle(config, fleet, metrics)
    metrics.watch_fleet(fleet, lambda: catalog_routes.catalog(fleet, lifecycle), config.strategy)
    return fleet, metrics


def samples(metrics: GatewayMetrics) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by(series: dict[tuple, float], label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in series.items()}


def test_healthy_nodes_per_model_count_only_nodes_taking_requests():
    fleet, metrics = a_fleet()
    healthy = by(samples(metrics)["cortex_model_healthy_nodes"], "model")
    # b: n1 yes, n2 draining; c: only on n3, which is down; p: loadable by path on every node taking requests.
    assert healthy == {"a": 1, "b": 1, "c": 0, "p": 1}, "aliases (fast) are left out"
    fleet.nodes["n2"].draining = False
    fleet.nodes["n1"].healthy = False
    assert by(samples(metrics)["cortex_model_healthy_nodes"], "model") == {"a": 0, "b": 1, "c": 0, "p": 1}


def test_node_gauges_are_in_base_units():
    _, metrics = a_fleet()
    got = samples(metrics)
    assert by(got["cortex_node_up"], "node") == {"n1": 1, "n2": 1, "n3": 0}
    assert by(got["cortex_node_draining"], "node") == {"n1": 0, "n2": 1, "n3": 0}
    assert got["cortex_device_memory_used_bytes"] == {(("device", "cuda:0"), ("node", "n1")): 768 * 2**20}
    assert got["cortex_device_memory_total_bytes"] == {(("device", "cuda:0"), ("node", "n1")): 1024 * 2**20}


def test_rare_events_have_zero_series_before_the_first():
    """A cold start, eviction or retry creates no series of its own: each exists at 0 beforehand, so
    Prometheus's increase() counts the first one. Only pairs the catalog allows get one."""
    _, metrics = a_fleet()
    got = samples(metrics)
    cold = {(dict(k)["model"], dict(k)["node"]): v for k, v in got["cortex_cold_starts_total"].items()}
    assert cold == {("a", "n1"): 0, ("b", "n1"): 0, ("b", "n2"): 0, ("c", "n3"): 0,
                    ("p", "n1"): 0, ("p", "n2"): 0, ("p", "n3"): 0}
    assert got["cortex_evictions_total"] == {(("model", "a"), ("node", "n1"), ("strategy", "priority")): 0}
    assert by(got["cortex_retries_total"], "model") == {"a": 0, "b": 0, "c": 0, "p": 0}


def test_names_follow_prometheus_conventions():
    """Counters end in _total and nothing else does; histograms and memory name their base unit."""
    _, metrics = a_fleet()
    rec = RequestRecord(model="a", endpoint="chat", started=0.0, node="n1", label="a")
    metrics.observe(rec)
    metrics.observe_wait("a", 0.1)
    for family in text_string_to_metric_families(metrics.render().decode()):
        name, kind = family.name, family.type
        assert re.fullmatch(r"cortex_[a-z][a-z0-9_]*", name), name
        assert not re.search(r"_(ms|milliseconds|mb|mib|kb|gb|minutes|hours|percent)(_|$)", name), name
        # prometheus_client's parser gives a counter's name without _total; its samples carry it.
        if kind == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        else:
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes", "_per_second")), name
        if "memory" in name:
            assert name.endswith("_bytes"), name
