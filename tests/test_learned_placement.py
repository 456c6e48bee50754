"""Placement that learns, with real processes: a gateway restarted over the same state dir plans a cold load
with what the model measured when it was loaded before (on another node), not with the node's estimate."""

from __future__ import annotations

import math

from cortex_gateway.learned_memory import LearnedMemoryStore, MemoryKey
from tests.helpers import http_json, one_node_fleet

HF_KEY = MemoryKey("tiny-hf", "auto", 0, 0, "cpu")


def chat(gateway, model: str) -> None:
    status, body = http_json("POST", gateway.url + "/v1/chat/completions",
                             {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert status == 200, body


def loaded_on(neuron) -> dict[str, dict]:
    status, body = http_json("GET", neuron.url + "/models")
    assert status == 200, body
    return {m["id"]: m for m in body["models"]}


def test_a_restarted_gateway_places_by_what_the_model_measured(tmp_path, models_dir):
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # First life: a roomy node; a request loads tiny-hf, and the gateway keeps what the node measured.
    with one_node_fleet(tmp_path / "a", models_dir, "--cpu-memory-mb", "4000", state_dir=state) as (gw, neuron, _):
        chat(gw, "tiny-hf")
        measured = loaded_on(neuron)["tiny-hf"]["memory_mb"]
        estimate = loaded_on(neuron)["tiny-hf"]["estimated_mb"]
    need, source = LearnedMemoryStore.in_dir(state).need(HF_KEY, estimate)
    assert source == "learned", (
        f"the torch backend measured {measured} MiB for tiny-hf against a {estimate} MiB estimate; this test needs "
        "the measure well above the estimate")
    # Second life: a node whose budget fits tiny-gguf plus tiny-hf by the estimate, but not by the measure.
    budget = math.ceil(need) + 1
    with one_node_fleet(tmp_path / "b", models_dir, "--cpu-memory-mb", str(budget), load=("tiny-gguf",),
                        state_dir=state, args=("--log-level", "debug")) as (gw, neuron, _):
        free = http_json("GET", neuron.url + "/health")[1]["devices"][0]["free_mb"]
        assert estimate <= free < need, (estimate, free, need)  # by the estimate alone, nothing is evicted
        chat(gw, "tiny-hf")
        assert set(loaded_on(neuron)) == {"tiny-hf"}  # tiny-gguf made room for what tiny-hf really takes
        status, body = http_json("GET", gw.url + "/admin/status")
        assert any(e["kind"] == "evict" and e["model"] == "tiny-gguf" for e in body["events"]), body["events"]
        assert f"placing tiny-hf on n1: {need:.1f} MiB learned" in gw.log()
