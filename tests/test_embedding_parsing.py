"""Embedding requests and model folders read without a server: the dimensions rule, the field policy
against the SDK's request type, and how a folder scan tells encoders from generators."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from neuron.server.catalog import hf_kind
from neuron.server.embedding_schema import check_dimensions, parse_embeddings
from neuron.shared.embedding_fields import POLICY
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelKind
from tests.embedding_models import MINILM


def test_check_dimensions_table():
    assert check_dimensions(None, 384, None, "m") == 384
    assert check_dimensions(384, 384, None, "m") == 384
    assert check_dimensions(100, 384, (), "m") == 100  # is_matryoshka: any size
    assert check_dimensions(128, 384, (128, 256), "m") == 128
    for asked, sizes in ((100, (128, 256)), (512, ()), (100, None)):
        with pytest.raises(ApiError) as exc:
            check_dimensions(asked, 384, sizes, "m")
        assert exc.value.param == "dimensions" and "384" in exc.value.message



def test_every_sdk_field_has_a_rule():
    from openai.types.embedding_create_params import EmbeddingCreateParams

    fields = set(typing.get_type_hints(EmbeddingCreateParams))
    assert fields, "the SDK's request type has no annotations"
    assert fields - set(POLICY.rules) == set(), "fields of EmbeddingCreateParams with no rule"
    assert set(POLICY.rules) - fields == set(), "rules for fields the SDK does not send"


def test_unknown_fields_are_refused_and_user_is_ignored():
    with pytest.raises(ApiError) as exc:
        parse_embeddings({"model": "m", "input": "x", "truncate": True})
    assert exc.value.code == "unknown_parameter" and exc.value.param == "truncate"
    assert parse_embeddings({"model": "m", "input": "x", "user": "u-1"}).inputs == ["x"]


def test_the_scan_tells_encoders_from_generators(tmp_path):
    def folder(name: str, architectures: list[str], modules: bool = False) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"architectures": architectures}))
        if modules:
            (d / "modules.json").write_text("[]")
        return d

    assert hf_kind(folder("bert", ["BertModel"])) == ModelKind.EMBEDDING
    assert hf_kind(folder("llama", ["LlamaForCausalLM"])) == ModelKind.GENERATION
    assert hf_kind(folder("st-decoder", ["Qwen3ForCausalLM"], modules=True)) == ModelKind.EMBEDDING
    assert hf_kind(folder("bare", [])) == ModelKind.GENERATION


def test_pipeline_reads_sentence_transformers_folders(tmp_path):
    from neuron.engine.backends.torch_encoder import Pipeline

    def st_folder(pooling: dict, extra_module: str | None = None) -> Path:
        d = tmp_path / f"st{len(list(tmp_path.iterdir()))}"
        (d / "1_Pooling").mkdir(parents=True)
        modules = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if extra_module:
            modules.append({"idx": 2, "path": "2_X", "type": f"sentence_transformers.models.{extra_module}"})
        (d / "modules.json").write_text(json.dumps(modules))
        (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        return d

    if MINILM:
        assert Pipeline.read(MINILM) == Pipeline(("mean",), True, 256)
    both = Pipeline.read(st_folder({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    assert both.pooling == ("cls", "mean") and not both.normalize
    assert Pipeline.read(st_folder({"pooling_mode_lasttoken": True}, "Normalize")).pooling == ("lasttoken",)
    with pytest.raises(ValueError, match="Dense"):
        Pipeline.read(st_folder({"pooling_mode_mean_tokens": True}, "Dense"))
    with pytest.raises(ValueError, match="weightedmean"):
        Pipeline.read(st_folder({"pooling_mode_weightedmean_tokens": True}))
    assert Pipeline.read(tmp_path) == Pipeline()  # no modules.json: mean pooling, normalised
