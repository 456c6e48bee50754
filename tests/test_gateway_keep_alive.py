"""Keep-alive with real processes: a gateway over one neuron with tiny models, keep-alives of 1 s.

Nothing here waits for a time to pass: each test waits (with a deadline) for an unload to happen, and
what stays loaded is asserted after it, which proves that at least one round ran past those models'
keep-alives. The pure decisions and the rounds on a set clock are tests/test_keep_alive.py.
"""

from __future__ import annotations

import openai
import pytest

from tests.helpers import NO_EOS, http_json, make_tiny, metric, one_node_fleet
from tests.test_neuron_lifecycle import health_model, wait_for

PATIENCE = 60.0  # seconds an unload may take on a loaded CI machine (a round is due every 0.25 s)


@pytest.fixture(scope="module")
def four_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("keep-alive-models")
    for i in (1, 2, 3, 4):
        make_tiny(d / f"m{i}.gguf", "gguf", "--seed", str(i))
    return d


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def use(gateway, model: str) -> None:
    client(gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)


def loaded(neuron) -> set[str]:
    return {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def wait_unloaded(neuron, model: str) -> None:
    wait_for(lambda: model not in loaded(neuron), timeout=PATIENCE, what=f"{model} unloaded by its keep-alive")


def test_an_idle_model_is_unloaded_and_pinned_or_zero_ones_stay(tmp_path, four_models):
    models_toml = '[[models]]\nid = "m2"\npinned_on = ["n1"]\n[[models]]\nid = "m3"\nkeep_alive_s = 0\n'
    with one_node_fleet(tmp_path, four_models, "--cpu-memory-mb", "4000", load=("m1", "m2", "m3"),
                        models_toml=models_toml, extra_toml="[scheduling]\nkeep_alive_s = 1") as (gateway, neuron, _):
        for model in ("m2", "m3", "m1"):  # m1 last: when it has gone, the others have been idle longer
            use(gateway, model)
        wait_unloaded(neuron, "m1")  # the default's 1 s, counted from its request
        assert {"m2", "m3"} <= loaded(neuron), "pinned (m2) and keep_alive_s = 0 (m3) are never unloaded for it"
        # The gateway counts the unload once the node's answer is back, which may be just after the node's
        # /models stopped listing it (a busy CI read 0 once): waited for, not read at once.
        wait_for(lambda: metric(gateway, 'cortex_unloads_total{model="m1",node="n1",reason="keep_alive"}') == 1,
                 timeout=PATIENCE, what="the keep-alive unload counted")
        events = [e for e in http_json("GET", gateway.url + "/admin/status")[1]["events"]
                  if e["kind"] == "keep_alive_unload"]
        assert [(e["node"], e["model"]) for e in events] == [("n1", "m1")] and events[0]["idle_s"] >= 1
        assert "keep_alive_unload node=n1 model=m1" in gateway.log()


def test_a_model_with_a_request_in_flight_past_its_keep_alive_stays_until_it_ends(tmp_path, four_models):
    """m1 streams slowly (the neuron's slow fault) while m2, used after m1's request began, goes idle: when m2
    has been unloaded a round has run with m1 idle past its keep-alive by its last use, and m1, still running
    there, stays. Once its request ends m1 goes too."""
    models_toml = "\n".join(f'[[models]]\nid = "m{i}"\nkeep_alive_s = 1' for i in (1, 2))
    with one_node_fleet(tmp_path, four_models, "--cpu-memory-mb", "4000", load=("m1", "m2"),
                        models_toml=models_toml) as (gateway, neuron, _):
        status, body = http_json("POST", neuron.url + "/debug/faults",
                                 {"model": "m1", "fault": "slow", "delay_ms": 100, "count": 1})
        assert status == 200, body
        stream = client(gateway).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=1000, stream=True,
            logit_bias=NO_EOS)
        chunks = iter(stream)
        next(chunks)
        use(gateway, "m2")
        wait_unloaded(neuron, "m2")
        assert "m1" in loaded(neuron), "in flight through the gateway: kept however long since it began"
        assert health_model(neuron, "m1")["running"] == 1, "and it was still running after that round"
        next(chunks)  # the stream goes on
        stream.close()
        wait_unloaded(neuron, "m1")
