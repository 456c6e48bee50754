"""Image requests parsed and refused without a model, the field table against the SDK's request type, and a
diffusers folder found by the catalog (its kind, and the weight files a load reads)."""

from __future__ import annotations

import pytest
from openai.types import image_generate_params

from neuron.server.catalog import scan
from neuron.server.diffusers_layout import pipeline_weight_files
from neuron.server.image_schema import parse_image_request
from neuron.shared.errors import ApiError
from neuron.shared.image_fields import POLICY
from neuron.shared.protocol import ModelKind


def sdk_fields(*types) -> set[str]:
    return {name for kind in types for klass in kind.__mro__ for name in getattr(klass, "__annotations__", {})}


def test_every_field_the_sdk_sends_has_a_rule():
    sent = sdk_fields(image_generate_params.ImageGenerateParamsNonStreaming,
                      image_generate_params.ImageGenerateParamsStreaming)
    assert sent - set(POLICY.rules) == set()


def test_defaults_and_honoured_fields():
    req = parse_image_request({"model": "m", "prompt": "p"})
    assert (req.n, req.size, req.output_format, req.seed, req.steps) == (1, None, "png", None, None)
    req = parse_image_request({"model": "m", "prompt": "p", "n": 3, "size": "512x768", "seed": 5,
                               "num_inference_steps": 4, "guidance_scale": 7, "negative_prompt": "blur",
                               "quality": "hd", "style": "vivid", "user": "u", "background": "auto"})
    assert (req.n, req.size, req.seed, req.steps, req.guidance_scale, req.negative_prompt) == \
        (3, (512, 768), 5, 4, 7.0, "blur")
    assert parse_image_request({"model": "m", "prompt": "p", "size": "auto"}).size is None


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "url"}, "response_format"),
    ({"size": "64x60"}, "size"),
    ({"size": "32x32"}, "size"),
    ({"size": 512}, "size"),
    ({"n": 11}, "n"),
    ({"n": True}, "n"),
    ({"steps": 0}, "steps"),
    ({"steps": 3, "num_inference_steps": 4}, "steps"),
    ({"guidance_scale": 31}, "guidance_scale"),
    ({"seed": 2**63}, "seed"),
    ({"negative_prompt": 1}, "negative_prompt"),
    ({"output_format": "gif"}, "output_format"),
    ({"stream": True}, "stream"),
    ({"partial_images": 2}, "partial_images"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "  "}, "prompt"),
    ({"colour": "red"}, "colour"),
])
def test_bad_fields_name_themselves(fields, param):
    with pytest.raises(ApiError) as exc:
        parse_image_request({"model": "m", "prompt": "p", **fields})
    assert exc.value.status == 400 and exc.value.param == param, exc.value.message


def _touch(path, size: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


def test_a_diffusers_folder_is_an_image_model_sized_by_the_files_a_load_reads(tmp_path):
    pipe = tmp_path / "sd"
    (pipe / "model_index.json").parent.mkdir(parents=True)
    (pipe / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    _touch(pipe / "unet" / "diffusion_pytorch_model.safetensors", 2**20)
    _touch(pipe / "unet" / "diffusion_pytorch_model.fp16.safetensors", 2**19)  # a variant: not read by default
    _touch(pipe / "unet" / "diffusion_pytorch_model.bin", 2**20)  # safetensors first
    _touch(pipe / "vae" / "diffusion_pytorch_model.fp16.safetensors", 2**19)  # only a variant: that one
    _touch(pipe / "text_encoder" / "model.bin", 2**20)
    (pipe / "scheduler").mkdir()
    read = {p.relative_to(pipe).as_posix() for p in pipeline_weight_files(pipe)}
    assert read == {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
                    "text_encoder/model.bin"}
    (ref,) = scan(tmp_path)
    assert (ref.id, ref.kind, ref.format, ref.size_mb) == ("sd", ModelKind.IMAGE, "hf", 2.5)


def test_a_folder_with_an_index_and_no_weights_is_no_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model_index.json").write_text("{}")
    assert scan(tmp_path) == []


def test_tiny_model_image_refuses_gguf(tmp_path):
    from click.testing import CliRunner

    from cortex_cli.commands.tiny_model import tiny_model

    result = CliRunner().invoke(tiny_model, [str(tmp_path / "x.gguf"), "--kind", "image", "--format", "gguf"])
    assert result.exit_code == 2 and "diffusers folder only" in result.output
    assert not (tmp_path / "x.gguf").exists()
