"""The monitoring files operators get (deploy/prometheus, deploy/grafana), checked without a fleet: promtool on
the alert rules and their unit tests, and the dashboard as a Grafana model. Their queries against a real
Prometheus over a real fleet: tests/test_prometheus_queries.py."""

from __future__ import annotations

import json
import subprocess

from tests.prometheus_fleet import needs
from tests.prometheus_server import ALERT_TESTS, ALERTS, DASHBOARD, PROMTOOL, alert_rules


def test_promtool_checks_the_rules_and_their_unit_tests(tmp_path):
    needs(PROMTOOL, "promtool (Debian's prometheus package)")
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    rules = alert_rules()
    assert len(rules) >= 6
    for rule in rules:
        assert rule.get("for") and rule["labels"].get("severity") in ("critical", "warning"), rule["alert"]
        assert rule["annotations"].get("summary") and len(rule["annotations"].get("description", "")) > 80, rule


def test_dashboard_is_an_importable_grafana_model():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
