"""Rerank through the gateway (real processes): a real `cortex neuron` serving `cortex tiny-model --kind rerank`,
a real `cortex serve` in front, a plain HTTP client (no SDK has a rerank call).

The tiny cross-encoder's weights are random, so its order means nothing; what is checked is what is
deterministic: every score equals the one transformers gives for the same pair (sigmoid of the one logit, as
sentence-transformers' CrossEncoder returns by default), results come sorted with indices that map back,
top_n cuts and return_documents leaves the text out.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import http_json, make_tiny, metric, one_node_fleet, wait_for

QUERY = "which city has the sunny weather"
DOCS = ["Paris is sunny today.", "The quick brown fox jumps over the lazy dog.", "Rain and cloud in London.",
        "Tokyo: temperature, sunny, no rain.", "Python code for a function that returns json."]


@pytest.fixture(scope="module")
def rerank_models(tmp_path_factory, models_dir):
    """A models directory: the tiny cross-encoder as "rerank" and as a GGUF, "rerank-gguf", linked again as
    "rerank-cold" (never loaded) and "rerank-lazy" (cold-loaded by a request); the tiny chat models as "tiny-gguf"
    and "chat-cold"."""
    models = tmp_path_factory.mktemp("rerank-models")
    make_tiny(models / "rerank", "hf", "--kind", "rerank")
    make_tiny(models / "rerank-gguf.gguf", "gguf", "--kind", "rerank")
    for name in ("rerank-cold", "rerank-lazy"):
        (models / name).symlink_to(models / "rerank")
    (models / "tiny-gguf.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    (models / "chat-cold.gguf").symlink_to(models_dir / "tiny-short.gguf")
    return models


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, rerank_models):
    with one_node_fleet(tmp_path_factory.mktemp("rerank"), rerank_models, "--cpu-memory-mb", "4000",
                        load=("rerank", "rerank-gguf", "tiny-gguf")) as (gateway, neuron, _):
        yield gateway, neuron


def direct_scores(folder, query: str, docs: list[str]) -> tuple[np.ndarray, int]:
    """What transformers itself gives for the pairs, as sentence-transformers' CrossEncoder.predict computes
    it (one padded batch, sigmoid of the logit), and the tokens the pairs take."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    batch = tokenizer([query] * len(docs), docs, padding=True, return_tensors="pt")
    with torch.inference_mode():
        scores = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    return scores, int(batch["attention_mask"].sum())


def rerank(proc, body: dict, path: str = "/v1/rerank") -> tuple[int, dict]:
    return http_json("POST", proc.url + path, body)


def test_scores_are_transformers_own_sorted_with_indices_that_map_back(fleet, rerank_models):
    gateway, _ = fleet
    status, body = rerank(gateway, {"model": "rerank", "query": QUERY, "documents": DOCS})
    assert status == 200, body
    expected, tokens = direct_scores(rerank_models / "rerank", QUERY, DOCS)
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose([expected[r["index"]] for r in results], scores, atol=1e-5)
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in results)  # returned by default
    assert body["model"] == "rerank" and body["id"].startswith("rerank-")
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert metric(gateway, 'cortex_requests_total{endpoint="rerank",model="rerank",node="n1",status="200"}') >= 1


def test_the_same_model_as_a_gguf_on_llama_cpp_scores_alike(fleet, rerank_models):
    """The GGUF holds the same weights (both token types embedded alike: llama.cpp reads every token as type 0)
    and llama.cpp frames the pair as BERT does, so its scores are transformers' own, within its kernels."""
    gateway, neuron = fleet
    status, body = rerank(gateway, {"model": "rerank-gguf", "query": QUERY, "documents": DOCS})
    assert status == 200, body
    expected, tokens = direct_scores(rerank_models / "rerank", QUERY, DOCS)
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]],
                               [expected[r["index"]] for r in body["results"]], atol=1e-4)
    assert body["usage"]["prompt_tokens"] == tokens
    loaded = {m["id"]: m for m in http_json("GET", neuron.url + "/models")[1]["models"]}
    assert loaded["rerank-gguf"]["backend"] == "llama.cpp" and loaded["rerank-gguf"]["kind"] == "rerank"


def test_top_n_cuts_and_return_documents_false_leaves_the_text_out(fleet):
    gateway, _ = fleet
    whole = rerank(gateway, {"model": "rerank", "query": QUERY, "documents": DOCS})[1]["results"]
    cut = rerank(gateway, {"model": "rerank", "query": QUERY, "documents": [{"text": d} for d in DOCS],
                           "top_n": 2, "return_documents": False})[1]["results"]
    assert [(r["index"], r["relevance_score"]) for r in cut] == [(r["index"], r["relevance_score"]) for r in whole[:2]]
    assert all("document" not in r for r in cut)
    more = rerank(gateway, {"model": "rerank", "query": QUERY, "documents": DOCS, "top_n": 50})[1]["results"]
    assert len(more) == len(DOCS)


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_the_aliases_llama_server_and_cohere_clients_use(fleet, path):
    gateway, _ = fleet
    body = {"model": "rerank", "query": QUERY, "documents": DOCS[:2]}
    assert rerank(gateway, body, path)[1]["results"] == rerank(gateway, body)[1]["results"]


@pytest.mark.parametrize(("change", "param"), [
    ({"documents": []}, "documents"),
    ({"documents": "Paris is sunny"}, "documents"),
    ({"documents": ["ok", 3]}, "documents"),
    ({"query": None}, "query"),
    ({"query": ""}, "query"),
    ({"top_n": 0}, "top_n"),
    ({"top_n": "2"}, "top_n"),
    ({"return_documents": "yes"}, "return_documents"),
    ({"truncate_prompt_tokens": 16}, "truncate_prompt_tokens"),
    ({"temprature": 1}, "temprature"),
    ({"model": None}, "model"),
], ids=lambda v: str(v))
def test_bad_input_is_a_400_naming_the_field(fleet, change, param):
    gateway, _ = fleet
    body = {k: v for k, v in {"model": "rerank", "query": QUERY, "documents": DOCS, **change}.items() if v is not None}
    status, answer = rerank(gateway, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param) or param in error["message"]


def test_a_pair_longer_than_the_context_is_refused_naming_the_document(fleet):
    gateway, _ = fleet
    status, answer = rerank(gateway, {"model": "rerank", "query": QUERY, "documents": ["sunny", "rain " * 600]})
    assert status == 400
    error = answer["error"]
    assert error["code"] == "context_length_exceeded" and "documents[1]" in error["message"]


@pytest.mark.parametrize("model", ["rerank", "rerank-cold"])
def test_a_rerank_model_asked_to_chat_is_a_400_before_any_load(fleet, model):
    """Loaded, the neuron refuses it; cold, the gateway does, from the node's disk listing, loading nothing."""
    import anthropic
    import openai

    gateway, neuron = fleet
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert f"model '{model}' is a rerank model: it serves /v1/rerank only" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model, input="hi")
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "rerank model" in exc.value.body["error"]["message"]
    assert "rerank-cold" not in {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


@pytest.mark.parametrize("model", ["tiny-gguf", "chat-cold"])
def test_a_chat_model_asked_to_rerank_is_a_400_before_any_load(fleet, model):
    gateway, neuron = fleet
    status, answer = rerank(gateway, {"model": model, "query": QUERY, "documents": DOCS})
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == "model" and error["code"] == "generation_model"
    assert f"model '{model}' is a chat model" in error["message"] and "pick a rerank model" in error["message"]
    assert "chat-cold" not in {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def test_models_list_each_kind(fleet):
    gateway, neuron = fleet
    kinds = {m["id"]: m["kind"] for m in http_json("GET", neuron.url + "/models/available")[1]["models"]}
    assert kinds["rerank"] == kinds["rerank-cold"] == kinds["rerank-gguf"] == "rerank"
    assert kinds["tiny-gguf"] == "generation"

    def listed() -> dict | None:
        models = {m["id"]: m for m in http_json("GET", gateway.url + "/v1/models")[1]["data"]}
        return models if {"rerank", "rerank-cold", "tiny-gguf", "chat-cold"} <= set(models) else None

    models = wait_for(listed, what="the gateway's catalog")
    assert models["rerank"]["kind"] == models["rerank-cold"]["kind"] == "rerank"
    assert models["tiny-gguf"]["kind"] == models["chat-cold"]["kind"] == "generation"


def test_a_rerank_request_cold_loads_its_model(fleet):
    gateway, neuron = fleet
    status, answer = rerank(gateway, {"model": "rerank-lazy", "query": QUERY, "documents": DOCS})
    assert status == 200, answer
    loaded = {m["id"]: m for m in http_json("GET", neuron.url + "/models")[1]["models"]}
    assert loaded["rerank-lazy"]["kind"] == "rerank" and loaded["rerank-lazy"]["backend"] == "torch"
