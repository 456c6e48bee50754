"""`cortex tiny-model --kind vision --format gguf`: a tiny vision chat model as llama.cpp serves one.

Two files, as vision GGUFs ship: `OUT.gguf`, the tiny Llama chat model (the same writer as `--kind
chat`, with a template that writes llama.cpp's media marker where each image part was), and
`OUT.mmproj.gguf`, its multimodal projector: a LLaVA-1.5 style one (architecture `clip`, projector type
`mlp`), a tiny CLIP vision tower over 32x32 images in 8-pixel patches and a two-layer GELU MLP into the
language model's embedding width, laid out as llama.cpp's convert_hf_to_gguf writes LLaVA's mmproj.
llama.cpp's mtmd library reads the pair; each image is 16 tokens of the prompt. Only the weights are
random: it answers gibberish, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron.tiny.model import TINY_MARKER_KEY, TinySpec, write_tiny_model
from neuron.tiny.vision import TinyVisionSpec  # one spec for both formats: the same sizes

MEDIA_MARKER = "<__media__>"  # mtmd_default_marker(): where llama.cpp's mtmd puts an image's tokens
# ChatML, each image part written as the media marker, text parts as they are.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + MEDIA_MARKER + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's normalisation, as LLaVA's processor has it
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class _VisionChat(TinySpec):
    """The tiny chat model with the template that marks images."""

    @property
    def chat_template(self) -> str:
        return TEMPLATE


def mmproj_path(model: Path) -> Path:
    """The projector beside a model: `NAME.gguf` pairs with `NAME.mmproj.gguf`."""
    return model.with_name(model.name.removesuffix(".gguf") + ".mmproj.gguf")


def write_tiny_vision_gguf(out: Path, spec: TinyVisionSpec = TinyVisionSpec()) -> Path:
    """Write `OUT.gguf` (the language model) and `OUT.mmproj.gguf` (its projector); returns the model's path."""
    chat = _VisionChat(layers=spec.layers, dim=spec.dim, vocab=spec.vocab, seed=spec.seed, context=spec.context)
    model = write_tiny_model(out, "gguf", chat)
    _write_mmproj(mmproj_path(model), spec)
    return model


def _weights(spec: TinyVisionSpec) -> dict[str, np.ndarray]:
    """The projector's tensors, in llama.cpp's names and torch's (out, in) shapes."""
    rng = np.random.default_rng(spec.seed + 1)
    d, ffn, n_pos = spec.dim, spec.dim * 2, spec.image_tokens + 1  # the class token's position too

    def normal(*shape, std=0.02):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    w = {"v.patch_embd.weight": normal(d, 3, spec.patch, spec.patch), "v.class_embd": normal(d),
         "v.position_embd.weight": normal(n_pos, d), "v.pre_ln.weight": np.ones(d, np.float32),
         "v.pre_ln.bias": np.zeros(d, np.float32)}
    for i in range(spec.layers):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w[p + name + ".weight"], w[p + name + ".bias"] = normal(d, d), np.zeros(d, np.float32)
        for name in ("ln1", "ln2"):
            w[p + name + ".weight"], w[p + name + ".bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        w[p + "ffn_up.weight"], w[p + "ffn_up.bias"] = normal(ffn, d), np.zeros(ffn, np.float32)
        w[p + "ffn_down.weight"], w[p + "ffn_down.bias"] = normal(d, ffn), np.zeros(d, np.float32)
    # The projector: linear, GELU, linear into the language model's width (its embeddings' scale).
    w["mm.0.weight"], w["mm.0.bias"] = normal(d, d, std=0.2), np.zeros(d, np.float32)
    w["mm.2.weight"], w["mm.2.bias"] = normal(d, d, std=0.5), np.zeros(d, np.float32)
    return w


def _write_mmproj(path: Path, spec: TinyVisionSpec) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name(path.name.removesuffix(".gguf"))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    vision = gguf.Keys.ClipVision
    writer.add_uint32(vision.IMAGE_SIZE, spec.image_size)
    writer.add_uint32(vision.PATCH_SIZE, spec.patch)
    writer.add_uint32(vision.EMBEDDING_LENGTH, spec.dim)
    writer.add_uint32(vision.FEED_FORWARD_LENGTH, spec.dim * 2)
    writer.add_uint32(vision.PROJECTION_DIM, spec.dim)
    writer.add_uint32(vision.BLOCK_COUNT, spec.layers)
    writer.add_uint32(vision.Attention.HEAD_COUNT, max(1, spec.dim // 16))
    writer.add_float32(vision.Attention.LAYERNORM_EPS, 1e-5)
    writer.add_array(vision.IMAGE_MEAN, CLIP_MEAN)
    writer.add_array(vision.IMAGE_STD, CLIP_STD)
    writer.add_bool(vision.USE_GELU, True)
    writer.add_bool(TINY_MARKER_KEY, True)
    for name, tensor in _weights(spec).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
