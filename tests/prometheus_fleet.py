"""The fleet a real Prometheus scrapes in tests/test_prometheus_queries.py, and the known traffic sent through it.

Neuron n1 (the conftest models, a 50 MiB CPU budget, so one tiny model at a time), neuron n2 (a token, and one
model of its own, tiny-b), a gateway over both, and Prometheus with deploy/prometheus's scrape config and alert
rules. Traffic goes through the gateway with the official openai client; `sent` counts what it did, by kind.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import openai
import pytest

from tests.helpers import NO_EOS, CortexProcess, http_json, start_gateway, start_neuron
from tests.prometheus_server import PROMETHEUS, Prometheus, render_config, render_rules

TOKEN = "prometheus-test-token"
MIB = 2**20
N1_BUDGET_MB = 50  # tiny-gguf (34.5 MiB estimated) and tiny-short (32.6) do not fit together: a cold load evicts
CATALOGUE = {"tiny-gguf", "tiny-hf", "tiny-short", "tiny-b"}


def needs(tool: str | None, name: str) -> None:
    if tool is None:
        pytest.skip(f"{name} is not installed: make test installs it where apt-get can")


@dataclass
class Fleet:
    n1: CortexProcess
    n2: CortexProcess
    gateway: CortexProcess
    prometheus: Prometheus
    started: float
    sent: Counter = field(default_factory=Counter)  # what the traffic did, by kind

    def client(self, url: str, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


@contextlib.contextmanager
def prometheus_fleet(tmp: Path, models_dir: Path) -> Iterator[Fleet]:
    """The fleet, Prometheus scraping it; everything killed however the block ends, a failed start included."""
    needs(PROMETHEUS, "prometheus")
    own = tmp / "n2-models"
    own.mkdir()
    shutil.copy(models_dir / "tiny-short.gguf", own / "tiny-b.gguf")  # a model only n2 has
    started = time.time()
    with contextlib.ExitStack() as stack:
        n1, n2 = started_together(
            stack, partial(start_neuron, tmp, models_dir, "--cpu-memory-mb", str(N1_BUDGET_MB), name="n1"),
            partial(start_neuron, tmp, own, name="n2", env={"CORTEX_NEURON_TOKEN": TOKEN}))
        assert http_json("POST", n1.url + "/models/load", {"model": "tiny-gguf"})[0] == 200
        gateway = start_gateway(tmp, {"n1": n1.url, "n2": n2.url}, extra_toml=f'neuron_token = "{TOKEN}"')
        stack.callback(gateway.kill)
        token_file = tmp / "neuron-token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        config = render_config(tmp / "prometheus.yml", gateway=gateway.metrics_url.split("/")[2],
                               neurons={"n1": f"127.0.0.1:{n1.port}", "n2": f"127.0.0.1:{n2.port}"},
                               token_file=token_file, rules=render_rules(tmp / "alerts.yml"))
        prometheus = stack.enter_context(Prometheus(tmp, config))
        prometheus.wait_ready()
        yield Fleet(n1, n2, gateway, prometheus, started)


def started_together(stack: contextlib.ExitStack, *starts: Callable[[], CortexProcess]) -> list[CortexProcess]:
    """Run the starts in parallel; each process that started is killed by `stack`, even when another failed."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
    for future in futures:
        if future.exception() is None:
            stack.callback(future.result().kill)
    return [future.result() for future in futures]  # the first failure raised, once the others are in the stack


def send_traffic(fleet: Fleet) -> None:
    """Three rounds to tiny-gguf (6 whole chats, 3 streamed, 3 404s, 3 400s), a streamed chat to tiny-short
    (a cold load on n1 that evicts tiny-gguf), three device faults on n2; then a scrape of everything.

    The first round creates every series; Prometheus scrapes it before the next two, so that rate() and
    the histogram quantiles see increases (a series' first value is its birth, not an increase)."""
    a_round(fleet, "tiny-gguf")
    fleet.prometheus.wait_for("the first round scraped", lambda: gateway_requests(fleet), lambda n: n == 5)
    a_round(fleet, "tiny-gguf")
    a_round(fleet, "tiny-gguf")
    chat(fleet, "tiny-short", stream=True)
    device_faults(fleet, 3)
    fleet.prometheus.wait_scraped_after(time.time())


def chat(fleet: Fleet, model: str, *, stream: bool) -> None:
    """A chat whose length is known: the end tokens are banned, so it runs to max_tokens (4, or 8 streamed)."""
    client = fleet.client(fleet.gateway.url)
    args = dict(model=model, messages=[{"role": "user", "content": "hello"}], logit_bias=NO_EOS)
    if stream:
        chunks = client.chat.completions.create(**args, max_tokens=8, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        assert client.chat.completions.create(**args, max_tokens=4).choices[0].message.content
    fleet.sent[(model, "stream" if stream else "whole")] += 1


def failures(fleet: Fleet) -> None:
    """Two 4xx: a model no one has (a new name each time: names must never become labels), a bad field."""
    client = fleet.client(fleet.gateway.url)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"no-such-{uuid.uuid4().hex}", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"stream": "yes"})
    fleet.sent["404"] += 1
    fleet.sent["400"] += 1


def a_round(fleet: Fleet, model: str) -> None:
    chat(fleet, model, stream=False)
    chat(fleet, model, stream=False)
    chat(fleet, model, stream=True)
    failures(fleet)


def gateway_requests(fleet: Fleet) -> float:
    return fleet.prometheus.values('sum(cortex_requests_total{job="cortex-gateway"})').get("", 0.0)


def ok(answer: tuple[int, dict]) -> dict:
    status, body = answer
    assert status == 200, body
    return body


def device_faults(fleet: Fleet, count: int) -> None:
    """`count` device errors on n2's tiny-b (fault injection), each recovered before the next."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok(http_json("POST", fleet.n2.url + "/models/load", {"model": "tiny-b"}, headers=auth))
    # The fault counters start at 0 when the model loads; wait until Prometheus has that 0, or the first
    # fault would be the series' birth, which increase() cannot see.
    fleet.prometheus.wait_value('cortex_neuron_recoveries_total{node="n2", outcome="reloaded"}', {"tiny-b": 0.0},
                                "model")
    client = fleet.client(fleet.n2.url, TOKEN)

    def models() -> dict:
        return ok(http_json("GET", fleet.n2.url + "/models", headers=auth))

    for _ in range(count):
        ok(http_json("POST", fleet.n2.url + "/debug/faults", {"model": "tiny-b", "fault": "device_error"},
                     headers=auth))
        with pytest.raises(openai.InternalServerError, match="model_recovering|device error"):
            client.chat.completions.create(model="tiny-b", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        fleet.prometheus.wait_for("tiny-b reloaded on n2", models, lambda body: [m["status"] for m in body["models"]]
                                  == ["loaded"])
    fleet.sent["device_faults"] += count
