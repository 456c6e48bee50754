"""Image generation through the gateway (real processes): a real `cortex neuron` serving `cortex tiny-model
--kind image` (a random-weight Stable Diffusion pipeline, diffusers layout), a real `cortex serve` in front,
the official `openai` client's `images.generate`.

The tiny pipeline's weights are random, so it draws noise; what is checked is what is deterministic: PNGs of
the asked size and number, the same seed giving the same bytes, the refusals naming their field, and the
model placed (cold-loaded, refused to the wrong kind before any load) like the others. 64x64, 2 steps.
"""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.helpers import http_json, make_tiny, metric, one_node_fleet

FAST = {"steps": 2}  # cortex's extension: two denoising steps keep a 64x64 job well under a second


@pytest.fixture(scope="module")
def image_models(tmp_path_factory, models_dir):
    """The tiny pipeline as "img", linked again as "img-lazy" (cold-loaded by a request) and "img-cold" (never
    loaded); the tiny chat GGUF as "tiny-gguf"."""
    models = tmp_path_factory.mktemp("image-models")
    make_tiny(models / "img", "hf", "--kind", "image")
    for name in ("img-lazy", "img-cold"):
        (models / name).symlink_to(models / "img")
    (models / "tiny-gguf.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    return models


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, image_models):
    with one_node_fleet(tmp_path_factory.mktemp("images"), image_models, "--cpu-memory-mb", "4000",
                        load=("img", "tiny-gguf")) as (gateway, neuron, _):
        yield gateway, neuron


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def generate(gateway, *, model: str = "img", size: str = "64x64", n: int = 1, **extra):
    return client(gateway).images.generate(model=model, prompt="a sunny city", size=size, n=n,
                                           response_format="b64_json", extra_body={**FAST, **extra})


def pngs(answer) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in answer.data]


def test_a_png_of_the_asked_size_metered_and_counted(fleet):
    gateway, neuron = fleet
    answer = generate(gateway, seed=1)
    (png,) = pngs(answer)
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
    assert answer.created > 0 and answer.usage.input_tokens > 0 and answer.data[0].revised_prompt is None
    assert metric(gateway, 'cortex_requests_total{endpoint="images",model="img",node="n1",status="200"}') >= 1
    assert metric(gateway, 'cortex_images_generated_total{model="img",node="n1"}') >= 1
    assert metric(gateway, 'cortex_image_seconds_count{model="img",node="n1"}') >= 1
    assert metric(gateway, 'cortex_time_to_first_token_seconds_count{model="img",node="n1"}') == 0  # none: one whole
    assert "image job" in neuron.log() and "step 2/2" in neuron.log()  # progress, step by step


def test_the_same_seed_gives_the_same_bytes_another_seed_others(fleet):
    gateway, _ = fleet
    first, again, other = (pngs(generate(gateway, seed=seed))[0] for seed in (7, 7, 8))
    assert first == again
    assert first != other


def test_n_gives_that_many_images_each_its_own(fleet):
    gateway, _ = fleet
    images = pngs(generate(gateway, n=2, seed=3, size="64x128"))
    assert len(images) == 2 and images[0] != images[1]
    assert {Image.open(io.BytesIO(png)).size for png in images} == {(64, 128)}


@pytest.mark.parametrize("fields, param, words", [
    ({"response_format": "url"}, "response_format", "the gateway stores no files"),
    ({"size": "65x64"}, "size", "multiple of 8"),
    ({"size": "64x4096"}, "size", "from 64 to 2048"),
    ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"n": 0}, "n", "must be >= 1"),
    ({"n": 11}, "n", "must be <= 10"),
    ({"prompt": ""}, "prompt", "prompt"),
    ({"background": "transparent"}, "background", "opaque"),
    ({"seed": -1}, "seed", "must be >= 0"),
])
def test_bad_fields_are_a_400_naming_the_field(fleet, fields, param, words):
    gateway, _ = fleet
    body = {"model": "img", "prompt": "a sunny city", "size": "64x64", **fields}
    with pytest.raises(openai.BadRequestError) as exc:
        client(gateway).images.generate(**{k: body.pop(k) for k in ("model", "prompt")}, extra_body=body)
    assert exc.value.body["param"] == param, exc.value.body
    assert words in exc.value.message


def test_a_chat_model_asked_for_an_image_and_an_image_model_asked_to_chat_are_400s(fleet):
    gateway, neuron = fleet
    with pytest.raises(openai.BadRequestError) as exc:
        generate(gateway, model="tiny-gguf")
    assert exc.value.body["param"] == "model"
    assert "'tiny-gguf' is a chat model" in exc.value.message and "image generation model" in exc.value.message
    for model in ("img", "img-cold"):  # loaded, and only on disk: refused before any load
        with pytest.raises(openai.BadRequestError) as exc:
            client(gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert exc.value.body["param"] == "model"
        assert f"'{model}' is an image generation model: it serves /v1/images/generations only" in exc.value.message
    assert "img-cold" not in {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def test_an_image_model_is_listed_with_its_kind_and_cold_loaded_on_demand(fleet):
    gateway, neuron = fleet
    listed = {m.id: m.model_extra.get("kind") for m in client(gateway).models.list()}
    assert listed["img"] == listed["img-lazy"] == "image"
    assert len(pngs(generate(gateway, model="img-lazy", seed=1))) == 1
    status, body = http_json("GET", neuron.url + "/models")
    assert {m["id"]: m["kind"] for m in body["models"]}["img-lazy"] == "image"
    assert metric(gateway, 'cortex_cold_starts_total{model="img-lazy",node="n1"}') == 1


def test_negative_prompt_guidance_and_output_format_are_honoured_and_a_long_prompt_is_cut_and_said(fleet):
    gateway, _ = fleet
    plain = pngs(generate(gateway, seed=4))[0]
    assert pngs(generate(gateway, seed=4, negative_prompt="rain"))[0] != plain
    assert pngs(generate(gateway, seed=4, guidance_scale=1.0))[0] != plain  # 1.0: no guidance, one UNet pass
    (jpeg,) = pngs(generate(gateway, seed=4, output_format="jpeg"))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    long = " ".join(["sunny"] * 100)  # past CLIP's 77 tokens
    answer = client(gateway).images.generate(model="img", prompt=long, size="64x64", extra_body={**FAST, "seed": 1})
    read = answer.data[0].revised_prompt
    assert read is not None and len(read) < len(long) and long.startswith(read)
