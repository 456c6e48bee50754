"""A real Prometheus scrapes a real fleet, and the queries operators write return what the traffic implies.

One stack for the module (tests/prometheus_fleet.py): neurons n1 and n2 (a token, and a model of its own), a
gateway over both, and Prometheus with deploy/prometheus's scrape config and alert rules. Known traffic goes
through the gateway with the official openai client; then every dashboard panel's expression and every
alert's is asked of Prometheus, with polls and deadlines (never sleeps). The last test kills n2 and waits for
the alerts. The deploy files alone (promtool, the dashboard's model): tests/test_prometheus_files.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.prometheus_fleet import CATALOGUE, MIB, N1_BUDGET_MB, a_round, prometheus_fleet, send_traffic
from tests.prometheus_server import DASHBOARD, PROMTOOL, Prometheus, alert_rules

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*"}  # what Grafana would put in, for "All" models


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with prometheus_fleet(tmp_path_factory.mktemp("prometheus"), models_dir) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def traffic(fleet):
    """The fleet after tests/prometheus_fleet.send_traffic, everything it sent scraped."""
    send_traffic(fleet)
    return fleet


# -- the tests ------------------------------------------------------------------------------------
def test_every_target_is_scraped_the_token_one_included(fleet):
    """n2 has a token: Prometheus scrapes it with the bearer credential of the scrape config, and without
    one its /metrics is refused."""
    targets = fleet.prometheus.wait_for(
        "three targets up", lambda: fleet.prometheus.api("targets")["activeTargets"],
        lambda ts: len(ts) == 3 and all(t["health"] == "up" for t in ts))
    assert {(t["labels"]["job"], t["labels"].get("node")) for t in targets} == {
        ("cortex-gateway", None), ("cortex-neuron", "n1"), ("cortex-neuron", "n2")}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(fleet.n2.url + "/metrics", timeout=10)
    assert refused.value.code == 401
    if PROMTOOL:  # the scrape config as rendered (its token file exists here) passes promtool's checks too
        done = subprocess.run([PROMTOOL, "check", "config", str(fleet.prometheus.config)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_counters_equal_the_requests_sent(traffic):
    p, sent = traffic.prometheus, traffic.sent
    whole, streamed = sent[("tiny-gguf", "whole")], sent[("tiny-gguf", "stream")]
    chats = whole + streamed
    p.wait_value('sum by (node, status) (cortex_requests_total{model="tiny-gguf"})', {("n1", "200"): chats},
                 "node", "status")
    p.wait_value('sum by (status) (cortex_requests_total{model="unknown", node="none"})',
                 {"404": sent["404"], "400": sent["400"]}, "status")
    p.wait_value("sum by (type) (cortex_errors_total)",
                 {"invalid_request_error": sent["404"] + sent["400"]}, "type")  # OpenAI's type for an unknown model
    total = sum(n for k, n in sent.items() if isinstance(k, tuple)) + sent["404"] + sent["400"]
    p.wait_value("sum(cortex_errors_total) / sum(cortex_requests_total)", {"": (sent["404"] + sent["400"]) / total})
    # The end tokens are banned, so every chat ran to max_tokens: 4 whole, 8 streamed. Both sides agree.
    tokens = 4 * whole + 8 * streamed
    p.wait_value('sum(cortex_tokens_total{model="tiny-gguf", kind="completion"})', {"": tokens})
    p.wait_value('sum(cortex_neuron_tokens_total{node="n1", model="tiny-gguf", kind="completion"})', {"": tokens})
    p.wait_value('sum(cortex_neuron_requests_total{node="n1", model="tiny-gguf"})', {"": chats})
    p.wait_value('sum(cortex_time_to_first_token_seconds_count{model="tiny-gguf"})', {"": chats})
    p.wait_value('sum(cortex_tokens_per_second_count{model="tiny-gguf"})', {"": streamed})
    p.wait_value('sum(cortex_queue_wait_seconds_count{model="tiny-gguf"})', {"": chats})


def test_cold_starts_evictions_and_recoveries(traffic):
    p = traffic.prometheus
    p.wait_value("sum by (model, node) (cortex_cold_starts_total) > 0", {("tiny-short", "n1"): 1}, "model", "node")
    p.wait_value("sum by (model, node) (cortex_evictions_total) > 0", {("tiny-gguf", "n1"): 1}, "model", "node")
    p.wait_value("sum(cortex_retries_total)", {"": 0})
    faults = traffic.sent["device_faults"]
    p.wait_value("sum by (node, model) (cortex_neuron_device_faults_total) > 0", {("n2", "tiny-b"): faults},
                 "node", "model")
    p.wait_value('cortex_neuron_recoveries_total{model="tiny-b"}', {"reloaded": faults, "failed": 0}, "outcome")


def test_fleet_gauges(traffic):
    p = traffic.prometheus
    p.wait_value("cortex_node_up", {"n1": 1, "n2": 1}, "node")
    p.wait_value("cortex_node_draining", {"n1": 0, "n2": 0}, "node")
    p.wait_value("cortex_model_healthy_nodes", dict.fromkeys(CATALOGUE, 1), "model")
    p.wait_value('cortex_device_memory_total_bytes{node="n1"}', {"cpu": N1_BUDGET_MB * MIB}, "device")
    used = p.values("cortex_device_memory_used_bytes", "node")
    assert used["n1"] > 0 and used["n2"] > 0, used  # n1 holds tiny-short, n2 tiny-b
    assert p.values('cortex_neuron_model_memory_bytes{node="n1"}', "model").keys() == {"tiny-short"}


def panels() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel of the Grafana dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def as_grafana_would(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not fill in: {expr}"
    return expr


def positive(values: dict, key) -> bool:
    return key in values and math.isfinite(values[key]) and values[key] > 0


# What the traffic implies for each panel, by title; every other panel must return data.
PANEL_CHECKS = {
    "Node up": (("node",), lambda v: v == {"n1": 1, "n2": 1}),
    "Nodes draining": (("node",), lambda v: v == {"n1": 0, "n2": 0}),
    "Healthy nodes per model": (("model",), lambda v: v == dict.fromkeys(CATALOGUE, 1)),
    "Scrape targets up": (("instance",), lambda v: len(v) == 3 and set(v.values()) == {1}),
    "Requests per second by model": (("model",), lambda v: positive(v, "tiny-gguf") and positive(v, "unknown")),
    "Errors by type": (("type",), lambda v: positive(v, "invalid_request_error")),
    "Time to first token": (("model",), lambda v: positive(v, "tiny-gguf")),
    "Decode speed per request": (("model",), lambda v: positive(v, "tiny-gguf")),
    "Token throughput": (("model", "kind"), lambda v: positive(v, ("tiny-gguf", "completion"))),
    "Request duration": (("model",), lambda v: positive(v, "tiny-gguf")),
    "Cold starts": (("model", "node"), lambda v: positive(v, ("tiny-short", "n1"))),
    "Evictions": (("model", "node"), lambda v: positive(v, ("tiny-gguf", "n1"))),
    "Device faults and recoveries": (("node", "model"), lambda v: positive(v, ("n2", "tiny-b"))),
    "Memory per device": (("node",), lambda v: positive(v, "n1") and positive(v, "n2")),
    "Memory used by model": (("model",), lambda v: positive(v, "tiny-short")),
}


def test_every_dashboard_panel_returns_what_the_traffic_implies(traffic):
    p, ran = traffic.prometheus, set()
    for title, expr in panels():
        query = as_grafana_would(expr)
        by, check = PANEL_CHECKS.get(title, ((), lambda v: bool(v)))
        p.wait_for(f"{title}: {query}", lambda q=query, b=by: p.values(q, *b), check, timeout=30)
        ran.add(title)
    assert ran >= set(PANEL_CHECKS), f"panels the checks name but the dashboard lacks: {set(PANEL_CHECKS) - ran}"
    # The two error ratios: the 4xx sent are a share of all requests; nothing failed on the server side.
    ratio = dict(zip(("server", "client"), (e for t, e in panels() if t == "Error ratio"), strict=True))
    assert p.values(as_grafana_would(ratio["server"])) == {"": 0.0}
    client = p.values(as_grafana_would(ratio["client"]))[""]
    assert 0 < client < 1, client


def test_alert_rules_are_healthy_and_only_the_recovery_alert_fires(traffic):
    """Every rule evaluates without error on the real series; with the fleet healthy only the three device
    faults fire one (CortexModelRecoveringRepeatedly, for n2's tiny-b)."""
    p = traffic.prometheus
    names = {r["alert"] for r in alert_rules()}
    loaded = p.wait_for("the rules evaluated", lambda: [r for g in p.api("rules")["groups"] for r in g["rules"]],
                        lambda rs: {r["name"] for r in rs} == names and all(r.get("lastEvaluation", "").startswith(
                            "2") and r["health"] == "ok" for r in rs))
    assert all(not r.get("lastError") for r in loaded)
    fired = p.wait_for("the recovery alert", p.firing, lambda a: any(
        x["labels"]["alertname"] == "CortexModelRecoveringRepeatedly" for x in a))
    assert {(a["labels"]["alertname"], a["labels"].get("node"), a["labels"].get("model")) for a in fired} == {
        ("CortexModelRecoveringRepeatedly", "n2", "tiny-b")}
    for rule in alert_rules():
        result = p.query(rule["expr"])
        assert bool(result) == (rule["alert"] == "CortexModelRecoveringRepeatedly"), (rule["alert"], result)


def series(p: Prometheus, since: float) -> set[frozenset]:
    found = p.api("series", **{"match[]": '{__name__=~"cortex_.+"}', "start": since})
    return {frozenset(s.items()) for s in found}


# prometheus_client writes an `X_created` sample beside each counter and histogram X: the time X started.
CREATED = re.compile(r"_created$")
NOT_BASE_UNITS = re.compile(r"_(ms|milliseconds|us|microseconds|minutes|hours|mb|mib|kb|kib|gb|gib|percent)(_|$)")
TIME_WORDS = re.compile(r"duration|wait|latency|time|load_seconds|cold_start")
BANNED_LABELS = {"id", "request_id", "request", "key", "api_key", "user", "prompt", "ip", "client", "trace_id"}


def test_series_follow_prometheus_conventions(traffic):
    p = traffic.prometheus
    metadata = p.api("metadata")
    names = {n for n in p.api("label/__name__/values") if n.startswith("cortex_")}
    families = {}
    for name in names:
        if name in metadata:
            families[name] = metadata[name][0]["type"]
        elif base := next((name.removesuffix(s) for s in ("_bucket", "_sum", "_count")
                           if metadata.get(name.removesuffix(s), [{}])[0].get("type") == "histogram"), None):
            families[base] = "histogram"
    for name, kind in families.items():
        assert re.fullmatch(r"cortex_[a-z][a-z0-9_]*", name), name
        assert not NOT_BASE_UNITS.search(name), f"{name}: base units only (seconds, bytes)"
        if CREATED.search(name):
            continue
        assert (kind == "counter") == name.endswith("_total"), f"{name} is a {kind}: only counters end in _total"
        if "memory" in name:
            assert name.endswith("_bytes"), f"{name}: memory is in bytes"
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes", "_per_second")), f"{name}: a histogram names its unit"
            if TIME_WORDS.search(name):
                assert name.endswith("_seconds"), f"{name}: time is in seconds"
    every = series(p, traffic.started)
    labels = {k for s in every for k, _ in s} - {"__name__", "job", "instance", "le"}
    assert not labels & BANNED_LABELS and all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in labels), labels
    values = {k: {v for s in every for key, v in s if key == k} for k in labels}
    assert values["model"] <= CATALOGUE | {"unknown"}, values["model"]
    assert values["node"] <= {"n1", "n2", "none"}, values["node"]
    # The gateway's status is the HTTP status; the neuron counts its answered requests only, all "ok".
    statuses = {v for s in every for k, v in s if k == "status" and ("job", "cortex-gateway") in s}
    assert statuses and all(re.fullmatch(r"[1-5]\d\d", s) for s in statuses), statuses


def test_series_do_not_grow_with_requests(traffic):
    """Another round of the same kinds of request (to tiny-short now, loaded on n1; new unknown names)
    adds no series: labels are bounded by the catalog, never by requests."""
    p = traffic.prometheus
    p.wait_scraped_after(time.time())
    before = series(p, traffic.started)
    a_round(traffic, "tiny-short")
    p.wait_value('sum(cortex_requests_total{model="tiny-short"})', {"": 4})
    p.wait_scraped_after(time.time())
    after = series(p, traffic.started)
    added = {dict(s)["__name__"] + str(sorted((k, v) for k, v in s if k != "__name__")) for s in after - before}
    assert not added, f"{len(added)} new series: {sorted(added)[:10]}"
    assert len(before) > 100


def test_killing_a_neuron_fires_the_node_down_alerts(traffic):
    """Kill n2: the gateway marks it down (CortexNodeDown), Prometheus cannot scrape it (CortexTargetDown),
    and tiny-b, which only n2 has, has no healthy node (CortexModelUnavailable). The rules were rendered
    with `for: 1s` (tests/prometheus_server.py render_rules), so this takes seconds, not minutes."""
    p = traffic.prometheus
    traffic.n2.kill()
    expected = {("CortexNodeDown", "n2", None), ("CortexTargetDown", "n2", None),
                ("CortexModelUnavailable", None, "tiny-b")}
    p.wait_for("the node-down alerts firing",
               lambda: {(a["labels"]["alertname"], a["labels"].get("node"), a["labels"].get("model"))
                        for a in p.firing()}, lambda got: expected <= got)
    p.wait_value("cortex_node_up", {"n1": 1, "n2": 0}, "node")
    assert p.values("cortex_model_healthy_nodes == 0", "model") == {"tiny-b": 0}
