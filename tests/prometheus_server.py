"""A real Prometheus for the tests: the deploy/ files rendered for loopback, the process, its HTTP API.

The scrape config and the rules are the ones operators get (deploy/prometheus/); only what must differ
on a test machine is changed: addresses, the token file, the intervals and (for the rules) `for:`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.helpers import free_port, stop_process, wait_serving

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "cortex.json"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
JOBS = "cortex-gateway|cortex-neuron"


def render_config(out: Path, *, gateway: str, neurons: dict[str, str], token_file: Path, rules: Path) -> Path:
    """deploy/prometheus/prometheus.yml with this machine's targets (node name -> host:port), scraped each second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"cortex-gateway", "cortex-neuron"}, "the test renders these two jobs; update it too"
    jobs["cortex-gateway"]["static_configs"] = [{"targets": [gateway]}]
    jobs["cortex-neuron"]["authorization"]["credentials_file"] = str(token_file)
    jobs["cortex-neuron"]["static_configs"] = [{"targets": [t], "labels": {"node": n}} for n, t in neurons.items()]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def render_rules(out: Path, for_: str = "1s") -> Path:
    """deploy/prometheus/alerts.yml with every `for:` shortened, so an alert fires in seconds, not minutes."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = for_
    out.write_text(yaml.safe_dump(rules, sort_keys=False))
    return out


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


class Prometheus:
    """`prometheus` on a free loopback port with a TSDB in `tmp`; always `stop()` it (or use it in a `with`)."""

    def __init__(self, tmp: Path, config: Path):
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_serving(self.proc, self.url + "/-/ready", self.log, timeout)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    # -- the HTTP API -----------------------------------------------------------------
    def api(self, path: str, **params) -> dict | list:
        """GET /api/v1/PATH; the `data` of a success, an AssertionError naming Prometheus's error otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "1.5"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}, not a vector"
        return data["result"]

    def values(self, expr: str, *by: str) -> dict:
        """{labels of `by` (one value, or a tuple): float} of an instant query."""
        out = {}
        for item in self.query(expr):
            key = tuple(item["metric"].get(label, "") for label in by)
            out[key if len(key) > 1 else key[0] if key else ""] = float(item["value"][1])
        return out

    def wait_for(self, what: str, probe: Callable[[], object], ok: Callable[[object], bool],
                 timeout: float = 60) -> object:
        """Poll `probe` until `ok` holds of its answer (returned) or the deadline passes (the last answer shown)."""
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if ok(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still {got!r} after {timeout}s")
            time.sleep(0.25)

    def wait_value(self, expr: str, expected: dict, *by: str, timeout: float = 60) -> dict:
        """Wait until the query's {labels: value} equals `expected` (floats compared to 1e-9)."""
        def same(got: dict) -> bool:
            return got.keys() == expected.keys() and all(math.isclose(got[k], v, abs_tol=1e-9)
                                                         for k, v in expected.items())
        return self.wait_for(expr, lambda: self.values(expr, *by), same, timeout)

    def wait_scraped_after(self, moment: float, timeout: float = 60) -> None:
        """Every cortex target has been scraped since `moment` (a time.time()): what it showed then is in."""
        self.wait_for(f"a scrape of every target after {moment:.3f}",
                      lambda: self.values(f'min(timestamp(up{{job=~"{JOBS}"}}))').get("", 0.0),
                      lambda last: last > moment)

    def firing(self) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]
