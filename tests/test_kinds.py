"""Kinds of model, pure: what the catalogue reads from a folder or a GGUF header, how older nodes parse, and
which kind serves which route (the one refusal both the neuron and the gateway give)."""

from __future__ import annotations

import json

import pytest

from cortex_gateway.catalog_routes import catalog
from cortex_gateway.config import GatewayConfig, NeuronSpec
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from neuron.server.catalog import ModelRef, estimate_mb, gguf_kind, hf_kind
from neuron.shared.kinds import SERVES, wrong_kind
from neuron.shared.protocol import AvailableModel, ModelInfo, ModelKind


def folder(tmp_path, config: dict, *extra: str):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    for name in extra:
        (path / name).write_text("[]")
    return path


@pytest.mark.parametrize(("config", "extra", "kind"), [
    ({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}, (), ModelKind.RERANK),
    ({"architectures": ["XLMRobertaForSequenceClassification"], "num_labels": 1}, (), ModelKind.RERANK),
    # sentence-transformers' CrossEncoder folders may carry a modules.json too: the head decides
    ({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}, ("modules.json",),
     ModelKind.RERANK),
    # a classifier of several labels ranks nothing (transformers' default is two labels)
    ({"architectures": ["BertForSequenceClassification"]}, (), ModelKind.EMBEDDING),
    ({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "NEG", "1": "POS"}}, (),
     ModelKind.EMBEDDING),
    ({"architectures": ["BertModel"]}, (), ModelKind.EMBEDDING),
    ({"architectures": ["LlamaForCausalLM"]}, ("modules.json",), ModelKind.EMBEDDING),
    ({"architectures": ["LlamaForCausalLM"]}, (), ModelKind.GENERATION),
    ({}, (), ModelKind.GENERATION),
])
def test_a_folder_says_its_kind(tmp_path, config, extra, kind):
    assert hf_kind(folder(tmp_path, config, *extra)) == kind


def write_gguf(path, arch: str, **keys) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        if isinstance(value, bool):
            writer.add_bool(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(("arch", "keys", "kind"), [
    ("bert", {"pooling_type": 4}, ModelKind.RERANK),  # llama.cpp's LLAMA_POOLING_TYPE_RANK
    ("bert", {"pooling_type": 1}, ModelKind.EMBEDDING),
    ("bert", {"attention.causal": False}, ModelKind.EMBEDDING),
    ("llama", {}, ModelKind.GENERATION),
])
def test_a_gguf_header_says_its_kind(tmp_path, arch, keys, kind):
    import gguf

    assert int(gguf.PoolingType.RANK) == 4
    write_gguf(tmp_path / "m.gguf", arch, **keys)
    assert gguf_kind(tmp_path / "m.gguf") == kind


def test_an_older_or_newer_node_still_parses():
    """An older node sends no kind (or only the two it knew); a newer one may send a kind this version does not
    know: both read as generation, the kind every model was before kinds were told apart."""
    assert ModelInfo.from_dict({"id": "m"}).kind == ModelKind.GENERATION
    assert AvailableModel.from_dict({"id": "m", "kind": "hologram"}).kind == ModelKind.GENERATION
    assert AvailableModel.from_dict({"id": "m", "kind": "rerank"}).kind == ModelKind.RERANK
    assert ModelInfo.from_dict(ModelInfo(id="m", kind=ModelKind.RERANK).to_dict()).kind == ModelKind.RERANK


def test_every_kind_serves_some_route_and_the_refusal_names_both_kinds():
    assert set(SERVES) == set(ModelKind)
    assert wrong_kind("r", ModelKind.RERANK, "/v1/rerank") is None
    assert wrong_kind("c", ModelKind.GENERATION, "/v1/embeddings") is None  # a chat model embeds too
    assert wrong_kind("x", None, "/v1/rerank") is None  # not known: the node that loads it says
    assert wrong_kind("r", ModelKind.RERANK, "/models/load") is None  # a route no kind lists is anyone's
    err = wrong_kind("r", ModelKind.RERANK, "/v1/chat/completions")
    assert (err.status, err.param, err.code) == (400, "model", "rerank_model")
    assert err.message.startswith("model 'r' is a rerank model: it serves /v1/rerank only; pick a chat model")
    err = wrong_kind("c", ModelKind.GENERATION, "/v1/rerank")
    assert err.code == "generation_model" and "pick a rerank model" in err.message
    assert "/tokenize" not in err.message
    err = wrong_kind("e", ModelKind.EMBEDDING, "/tokenize")
    assert err.code == "embedding_model" and "'e' is an embedding model: it serves /v1/embeddings only" in err.message


def test_a_reranker_is_sized_for_one_batch_not_for_decoding_slots(tmp_path):
    path = folder(tmp_path, {"architectures": ["BertForSequenceClassification"], "num_labels": 1,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
                             "max_position_embeddings": 512})
    ref = ModelRef("r", "hf", str(path), 1.0, kind=ModelKind.RERANK)
    chat = ModelRef("r", "hf", str(path), 1.0, kind=ModelKind.GENERATION)
    assert estimate_mb(ref, None, on_cpu=True, parallel=8) < estimate_mb(chat, None, on_cpu=True, parallel=8)


def test_the_gateway_s_catalog_and_placement_read_the_kind_the_nodes_agree_on():
    specs = [NeuronSpec(name, "http://127.0.0.1:9") for name in ("a", "b")]
    fleet = Fleet(specs, session=None)
    lifecycle = Lifecycle(GatewayConfig(neurons=specs), fleet, GatewayMetrics())
    fleet.nodes["a"].models = {"r": ModelInfo("r", kind=ModelKind.RERANK)}
    fleet.nodes["a"].available = {"r": AvailableModel("r", kind=ModelKind.RERANK),
                                  "x": AvailableModel("x", kind=ModelKind.EMBEDDING)}
    fleet.nodes["b"].available = {"x": AvailableModel("x")}  # the same name, another kind, on another node
    kinds = {e["id"]: e["kind"] for e in catalog(fleet, lifecycle)}
    assert kinds == {"r": "rerank", "x": None}
    assert lifecycle.kind_of("r") == ModelKind.RERANK and lifecycle.kind_of("x") is None
    assert lifecycle.kind_of("nowhere") is None
