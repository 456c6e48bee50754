"""`cortex tiny-model --kind vision`: a small random-weight vision chat model, written without downloads.

A genuine `LlavaForConditionalGeneration` (a tiny CLIP vision tower, a projector, a tiny Llama) with a
`LlavaProcessor` (a CLIP image processor at 32x32 pixels, the tiny models' BPE tokenizer with an
`<image>` token) and a ChatML template that puts `<image>` where each image part was, so it loads
through `AutoModelForImageTextToText` and `AutoProcessor` and the neuron's real vision path in
seconds on a CPU. Each image is 16 tokens of the prompt (4x4 patches of 8 pixels). Only the weights
are random: it answers gibberish, deterministically (the same seed, the same model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from neuron.tiny.model import TINY_MARKER_KEY
from neuron.tiny.tokenizer import BOS_TOKEN, EOS_TOKEN, train_tokenizer

IMAGE_TOKEN = "<image>"
# ChatML, with each {"type": "image"} part as the processor's <image> placeholder (it expands it to the
# image's tokens) and text parts as they are; string contents as the plain ChatML template has them.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyVisionSpec:
    layers: int = 2
    dim: int = 64
    vocab: int = 512
    seed: int = 0
    context: int = 2048
    image_size: int = 32
    patch: int = 8

    def validate(self) -> None:
        if self.layers < 1 or self.dim < 16 or self.dim % 16:
            raise ValueError("--layers must be >= 1 and --dim a multiple of 16 (>= 16)")
        if self.vocab < 300:
            raise ValueError("--vocab must be at least 300 (256 byte tokens + specials + merges)")

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2


def write_tiny_vision(out: Path, spec: TinyVisionSpec = TinyVisionSpec()) -> Path:
    """Write the model, its processor and its template to the folder `out`; returns `out`."""
    spec.validate()
    import torch
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _tokenizer(spec)
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(_config(spec, len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)))
    ends = tokenizer.convert_tokens_to_ids([EOS_TOKEN, BOS_TOKEN])
    model.generation_config.eos_token_id, model.generation_config.bos_token_id = ends, ends[1]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    images = CLIPImageProcessor(size={"shortest_edge": spec.image_size},
                                crop_size={"height": spec.image_size, "width": spec.image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, chat_template=TEMPLATE,
                               patch_size=spec.patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token=IMAGE_TOKEN)
    processor.save_pretrained(str(out))
    _mark(out / "config.json")
    return out


def _tokenizer(spec: TinyVisionSpec):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(spec.vocab, spec.seed), bos_token=BOS_TOKEN,
                                        eos_token=EOS_TOKEN, pad_token=BOS_TOKEN, model_max_length=spec.context)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _config(spec: TinyVisionSpec, vocab: int, image_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    heads = max(1, spec.dim // 16)
    vision = CLIPVisionConfig(hidden_size=spec.dim, intermediate_size=spec.dim * 2, num_hidden_layers=spec.layers,
                              num_attention_heads=heads, image_size=spec.image_size, patch_size=spec.patch,
                              projection_dim=spec.dim)
    text = LlamaConfig(hidden_size=spec.dim, intermediate_size=spec.dim * 2, num_hidden_layers=spec.layers,
                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), vocab_size=vocab,
                       max_position_embeddings=spec.context, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                       vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu")


def _mark(path: Path) -> None:
    """The tiny model's marker (scripted output is allowed on it alone), written into its config."""
    config = json.loads(path.read_text())
    config[TINY_MARKER_KEY] = True
    path.write_text(json.dumps(config, indent=2) + "\n")
