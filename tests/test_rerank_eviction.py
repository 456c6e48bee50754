"""Rerank models are placed like the others (real processes): cold-loaded by a request, evicted by the gateway
for another model's cold load when the node's budget holds one alone, whatever the kinds."""

from __future__ import annotations

import openai

from tests.helpers import http_json, make_tiny, metric, one_node_fleet

# A tiny cross-encoder and a tiny chat GGUF are each about 33 MiB by estimate: a 50 MiB budget holds one.
BUDGET = "50"


def loaded(neuron) -> set[str]:
    return {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def rerank(gateway, model: str) -> None:
    status, answer = http_json("POST", gateway.url + "/v1/rerank",
                               {"model": model, "query": "sunny", "documents": ["a", "b"]})
    assert status == 200, answer


def test_rerank_models_are_cold_loaded_and_evicted_like_the_others(tmp_path, models_dir):
    models = tmp_path / "models"
    make_tiny(models / "r1", "hf", "--kind", "rerank")
    make_tiny(models / "r2", "hf", "--kind", "rerank", "--seed", "1")
    (models / "chat.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    with one_node_fleet(tmp_path, models, "--cpu-memory-mb", BUDGET) as (gateway, neuron, _):
        rerank(gateway, "r1")
        assert loaded(neuron) == {"r1"}
        rerank(gateway, "r2")
        assert loaded(neuron) == {"r2"}
        assert metric(gateway, 'cortex_evictions_total{model="r1",node="n1",strategy="lru"}') == 1
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert loaded(neuron) == {"chat"}
        assert metric(gateway, 'cortex_evictions_total{model="r2",node="n1",strategy="lru"}') == 1
