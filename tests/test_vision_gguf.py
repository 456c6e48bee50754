"""`cortex tiny-model --kind vision --format gguf`: the chat GGUF and its projector load in llama.cpp's mtmd
(through llama-cpp-python's own multimodal chat handler) and answer a chat with an image, the image
counted in the prompt's tokens; and a real `cortex neuron` behind a real `cortex serve` serves the pair on
the llama.cpp backend (`neuron.engine.backends.llamacpp_vision`), driven by the official SDKs."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from tests.helpers import http_json, start_gateway, start_neuron

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'cortex-fleet[llama]')")
pytest.importorskip("llama_cpp.mtmd_cpp", reason="this llama-cpp-python has no mtmd (multimodal) bindings")

CORTEX = Path(sys.executable).with_name("cortex")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("vision-gguf") / "tiny"
    done = subprocess.run([str(CORTEX), "tiny-model", str(out), "--kind", "vision", "--format", "gguf"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model, projector = out.with_suffix(".gguf"), out.parent / "tiny.mmproj.gguf"
    assert model.is_file() and projector.is_file(), done.stdout
    return model, projector


def _png_url(color=(200, 30, 30)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_the_projector_reads_as_a_clip_gguf(pair):
    from neuron.server.catalog import gguf_metadata

    meta = gguf_metadata(pair[1])
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == "mlp"
    assert meta["clip.vision.projection_dim"] == gguf_metadata(pair[0])["llama.embedding_length"]


def test_llama_cpp_answers_a_chat_with_an_image(pair):
    from llama_cpp.llama_chat_format import MTMDChatHandler

    model, projector = pair
    handler = MTMDChatHandler(str(projector), verbose=False, use_gpu=False)
    llm = llama_cpp.Llama(str(model), chat_handler=handler, n_ctx=512, n_gpu_layers=0, verbose=False)
    try:
        text = [{"type": "text", "text": "what is this?"}]
        with_image = text + [{"type": "image_url", "image_url": {"url": _png_url()}}]
        seen = llm.create_chat_completion(messages=[{"role": "user", "content": with_image}], max_tokens=4,
                                          temperature=0)
        plain = llm.create_chat_completion(messages=[{"role": "user", "content": text}], max_tokens=4,
                                           temperature=0)
    finally:
        llm.close()
    assert seen["choices"][0]["message"]["content"] is not None
    # 32x32 pixels in 8-pixel patches: the image is 16 tokens of the prompt.
    assert seen["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 16, (seen["usage"], plain["usage"])


IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory, pair):
    """(gateway, neuron) over a models directory holding the pair, beside a folder-layout copy of it."""
    models = tmp_path_factory.mktemp("vision-gguf-models")
    (models / "tiny-vl.gguf").symlink_to(pair[0])
    (models / "tiny-vl.mmproj.gguf").symlink_to(pair[1])
    root = tmp_path_factory.mktemp("vision-gguf-serve")
    with start_neuron(root, models) as neuron:
        status, body = http_json("POST", neuron.url + "/models/load", {"model": "tiny-vl", "backend": "llama.cpp"})
        assert status == 200 and body["kind"] == "vision", body
        (root / "g").mkdir()
        with start_gateway(root / "g", {"n1": neuron.url}) as gateway:
            yield gateway, neuron


def _chat(client, content) -> object:
    return client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": content}],
                                          max_tokens=4, temperature=0)


def test_a_chat_with_an_image_answers_on_llama_cpp_and_counts_the_image(served):
    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)
    text = [{"type": "text", "text": "what is this?"}]
    plain = _chat(client, text)
    seen = _chat(client, text + [{"type": "image_url", "image_url": {"url": _png_url()}}])
    again = _chat(client, text + [{"type": "image_url", "image_url": {"url": _png_url()}}])
    assert seen.choices[0].finish_reason in ("length", "stop") and 1 <= seen.usage.completion_tokens <= 4
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + IMAGE_TOKENS
    assert again.choices[0].message.content == seen.choices[0].message.content  # greedy: the same image, the same
    typed = _chat(client, [{"type": "text", "text": "what is this? <__media__>"}])  # a typed marker is text
    assert typed.usage.prompt_tokens < plain.usage.prompt_tokens + IMAGE_TOKENS


def test_the_image_itself_is_read_and_never_taken_from_another_images_cache(served):
    """Two images, the same prompt ids but for the image: each request's first token has its own logprobs, the
    same each time its image comes again, whichever image went before, with several choices and streamed."""
    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def first(color, n=1):
        content = [{"type": "text", "text": "what is this?"},
                   {"type": "image_url", "image_url": {"url": _png_url(color)}}]
        answer = client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": content}],
                                                max_tokens=2, temperature=0, logprobs=True, top_logprobs=3, n=n)
        return [[(t.token, round(t.logprob, 4)) for t in c.logprobs.content[0].top_logprobs] for c in answer.choices]

    red, blue = first((200, 30, 30)), first((20, 30, 220))
    assert red != blue
    assert first((200, 30, 30), n=2) == red * 2 and first((20, 30, 220)) == blue
    image_first = [{"type": "image_url", "image_url": {"url": _png_url()}}, {"type": "text", "text": "and now?"}]
    stream = client.chat.completions.create(model="tiny-vl", stream=True, max_tokens=3, temperature=0,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": image_first}])
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens > IMAGE_TOKENS


def test_image_and_text_requests_decode_together(served):
    """Several at once, images and text, in one model's batch: each answers with its own prompt's count."""
    from concurrent.futures import ThreadPoolExecutor

    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)
    text = [{"type": "text", "text": "what is this?"}]
    contents = [text + [{"type": "image_url", "image_url": {"url": _png_url((10 * i, 200, 30))}}] if i % 2 else text
                for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda c: _chat(client, c), contents))
    counts = [a.usage.prompt_tokens for a in answers]
    assert counts[1::2] == [counts[0] + IMAGE_TOKENS] * 3 and set(counts[0::2]) == {counts[0]}, counts
    assert all(a.usage.completion_tokens >= 1 for a in answers)


def test_structured_output_holds_with_an_image(served):
    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"],
              "additionalProperties": False}
    content = [{"type": "text", "text": "which color?"}, {"type": "image_url", "image_url": {"url": _png_url()}}]
    answer = client.chat.completions.create(
        model="tiny-vl", messages=[{"role": "user", "content": content}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert json.loads(answer.choices[0].message.content)["color"] in ("red", "blue")


def test_an_anthropic_image_block_answers_and_counts(served):
    client = anthropic.Anthropic(base_url=served[0].url, api_key="unused", max_retries=0, timeout=120)
    data = _png_url().split(",", 1)[1]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "describe"}, image]}]
    answer = client.messages.create(model="tiny-vl", max_tokens=4, messages=messages)
    assert answer.content and answer.usage.output_tokens >= 1
    with_image = client.messages.count_tokens(model="tiny-vl", messages=messages).input_tokens
    without = client.messages.count_tokens(model="tiny-vl", messages=[
        {"role": "user", "content": [{"type": "text", "text": "describe"}]}]).input_tokens
    assert with_image == without + IMAGE_TOKENS
    # Anthropic's input_tokens leave out what was read from the cache (the text before the image, at most).
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens == with_image


def test_the_pair_is_listed_once_as_vision_and_the_projector_not_at_all(served):
    client = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0)
    kinds = {m.id: (m.model_extra or {}).get("kind") for m in client.models.list().data}
    assert kinds.get("tiny-vl") == "vision", kinds
    assert not any("mmproj" in name for name in kinds), kinds
    status, body = http_json("GET", served[1].url + "/models/available")
    assert status == 200 and "mmproj" not in str(body), body


def test_a_folder_with_one_model_and_one_mmproj_is_a_vision_model(tmp_path, pair):
    from neuron.server.catalog import resolve
    from neuron.shared.protocol import ModelKind

    folder = tmp_path / "models" / "vl"
    folder.mkdir(parents=True)
    shutil.copy(pair[0], folder / "model-q8.gguf")  # copies: a load by path reads inside its roots only
    shutil.copy(pair[1], folder / "mmproj-f16.gguf")
    ref = resolve("vl/model-q8.gguf", tmp_path / "models")
    assert ref.kind == ModelKind.VISION and ref.size_mb * 2**20 >= pair[0].stat().st_size + pair[1].stat().st_size
    shutil.copy(pair[0], folder / "other.gguf")  # two models: which one the projector serves is unknown
    assert resolve("vl/model-q8.gguf", tmp_path / "models").kind == ModelKind.GENERATION


def test_the_pair_unloads_and_loads_again(served):
    """The projector is freed with the model and opened again with it: the reloaded pair reads images still."""
    neuron = served[1]
    status, body = http_json("POST", neuron.url + "/models/unload", {"model": "tiny-vl"})
    assert status == 200, body
    status, body = http_json("POST", neuron.url + "/models/load", {"model": "tiny-vl"})
    assert status == 200 and body["kind"] == "vision", body
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": _png_url()}}]
    status, body = http_json("POST", neuron.url + "/tokenize",
                             {"model": "tiny-vl", "messages": [{"role": "user", "content": content}]})
    assert status == 200 and body["count"] > IMAGE_TOKENS, body
