"""Embeddings through the gateway (real processes): the same vectors as from the neuron, and a chat for an
embedding model refused from the node's disk listing, before any load."""

from __future__ import annotations

import anthropic
import numpy as np
import openai
import pytest

from tests.embedding_models import MINILM, NO_MINILM, PAIR, TINY, embedding_models
from tests.helpers import http_json, one_node_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    """A gateway over one neuron serving the embedding test models (tests/embedding_models), the tiny ones and
    MiniLM (when installed) loaded."""
    root = tmp_path_factory.mktemp("embeddings-gateway")
    load = (*TINY, "minilm") if MINILM else tuple(TINY)
    with one_node_fleet(root, embedding_models(root, models_dir), "--cpu-memory-mb", "4000",
                        load=load) as (gateway, neuron, _):
        yield gateway, neuron


def openai_client(proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)


def vectors(client: openai.OpenAI, model: str, input) -> np.ndarray:
    return np.array([d.embedding for d in client.embeddings.create(model=model, input=input).data])


def test_through_the_gateway(fleet):
    gateway, neuron = fleet
    model = "minilm" if MINILM else "tiny-gguf"
    direct = vectors(openai_client(neuron), model, PAIR)
    np.testing.assert_allclose(vectors(openai_client(gateway), model, PAIR), direct, atol=1e-7)


def test_chat_for_an_embedding_model_on_disk_is_refused_before_loading_it(fleet):
    """The gateway knows the kind from the node's disk listing: no cold load, no eviction for it."""
    if MINILM is None:
        pytest.skip(NO_MINILM)
    gateway, neuron = fleet
    status, body = http_json("GET", neuron.url + "/models/available")
    assert {m["id"]: m["kind"] for m in body["models"]}["minilm-cold"] == "embedding"
    through = openai_client(gateway)
    with pytest.raises(openai.BadRequestError) as exc:
        through.chat.completions.create(model="minilm-cold", messages=[{"role": "user", "content": "hi"}])
    assert "'minilm-cold' is an embedding model: it serves /v1/embeddings only" in exc.value.message
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model="minilm-cold", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert "embedding model" in exc.value.body["error"]["message"]
    status, body = http_json("GET", neuron.url + "/models")
    assert "minilm-cold" not in {m["id"] for m in body["models"]}
    assert len(vectors(through, "minilm-cold", ["a"])[0]) == 384  # embeddings still cold-load it
