"""Eviction under a small memory budget (lru, priority, pins) and failover when a neuron dies."""

from __future__ import annotations

import contextlib

import openai
import pytest

from tests.helpers import (
    NO_EOS,
    http_json,
    killed_after,
    metric,
    one_node_fleet,
    start_gateway,
    start_neuron,
)

# Three tiny GGUFs of about 33 MiB each (estimate) on an 80 MiB CPU budget: two fit, never three.
BUDGET = "80"


@contextlib.contextmanager
def small_fleet(tmp_path, models_dir, strategy: str, models_toml: str = ""):
    """(neuron, gateway): one neuron with a small budget, evicting by `strategy`; both stopped at the end."""
    with one_node_fleet(tmp_path, models_dir, "--cpu-memory-mb", BUDGET, models_toml=models_toml,
                        extra_toml=f'[eviction]\nstrategy = "{strategy}"') as (gateway, neuron, _):
        yield neuron, gateway


def use(gateway, model):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)


def loaded(neuron) -> set[str]:
    return {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def test_lru_evicts_least_recently_used_and_keeps_pinned(tmp_path, three_models):
    models_toml = "# my models, with comments\n[[models]]\nid = \"m1\"  # the important one\n"
    with small_fleet(tmp_path, three_models, "lru", models_toml) as (neuron, gateway):
        for model in ("m1", "m2", "m1"):
            use(gateway, model)
        assert loaded(neuron) == {"m1", "m2"}
        use(gateway, "m3")  # m2 is the least recently used
        assert loaded(neuron) == {"m1", "m3"}
        assert metric(gateway, 'cortex_evictions_total{model="m2",node="n1",strategy="lru"}') == 1
        status, _ = http_json("POST", gateway.url + "/admin/pin", {"node": "n1", "model": "m1"})
        assert status == 200
        use(gateway, "m3")
        use(gateway, "m2")  # m1 is now least recently used, but pinned: m3 goes
        assert loaded(neuron) == {"m1", "m2"}
        text = (tmp_path / "models.toml").read_text()
        assert "# my models, with comments" in text and "# the important one" in text
        assert 'pinned_on = ["n1"]' in text


def test_priority_evicts_lowest_priority_first(tmp_path, three_models):
    models_toml = "\n".join(f'[[models]]\nid = "m{i}"\npriority = {p}' for i, p in ((1, 10), (2, 200), (3, 100)))
    with small_fleet(tmp_path, three_models, "priority", models_toml) as (neuron, gateway):
        for model in ("m1", "m2", "m1"):
            use(gateway, model)
        use(gateway, "m3")  # m1 was used last, but its priority is the lowest
        assert loaded(neuron) == {"m2", "m3"}
        assert metric(gateway, 'cortex_evictions_total{model="m1",node="n1",strategy="priority"}') == 1


def test_nothing_evictable_is_a_503(tmp_path, three_models):
    with small_fleet(tmp_path, three_models, "lru") as (neuron, gateway):
        for model in ("m1", "m2"):
            use(gateway, model)
            http_json("POST", gateway.url + "/admin/pin", {"node": "n1", "model": model})
        status, body = http_json("POST", gateway.url + "/v1/chat/completions",
                                 {"model": "m3", "messages": [{"role": "user", "content": "x"}]})
        assert status == 503 and body["error"]["code"] == "no_capacity"
        assert loaded(neuron) == {"m1", "m2"}


def test_neuron_killed_mid_stream_then_served_elsewhere(tmp_path, three_models):
    with (killed_after(start_neuron(tmp_path, three_models, "--cpu-memory-mb", "4000", name="n1")) as n1,
          start_neuron(tmp_path, three_models, "--cpu-memory-mb", "4000", name="n2") as n2,
          start_gateway(tmp_path, {"n1": n1.url, "n2": n2.url}) as gateway):
        for node in ("n1", "n2"):
            assert http_json("POST", gateway.url + "/admin/load", {"node": node, "model": "m1"})[0] == 200
        http_json("POST", n1.url + "/debug/faults", {"model": "m1", "fault": "slow", "delay_ms": 100})
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=100, stream=True, logit_bias=NO_EOS)
        got_text = False
        with pytest.raises(openai.APIError) as err:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if not got_text:
                        n1.kill()  # the node serving this stream dies mid-answer
                    got_text = True
        assert got_text and "mid-stream" in str(err.value)
        assert metric(gateway, 'cortex_errors_total{model="m1",node="n1",type="upstream_failed"}') == 1
        resp = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=3)
        assert resp.usage.completion_tokens > 0
        assert metric(gateway, 'cortex_requests_total{endpoint="chat",model="m1",node="n2",status="200"}') >= 1


def test_model_unloaded_behind_the_gateways_back_is_loaded_again(tmp_path, three_models):
    """A stale view ("loaded on n1") must not make the only node that can serve the model off-limits."""
    with small_fleet(tmp_path, three_models, "lru") as (neuron, gateway):
        use(gateway, "m1")
        # directly, not via the gateway
        assert http_json("POST", neuron.url + "/models/unload", {"model": "m1"})[0] == 200
        use(gateway, "m1")  # the gateway still believes m1 is on n1: the neuron says no, and it loads it again
        assert "m1" in loaded(neuron)
