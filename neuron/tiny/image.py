"""`cortex tiny-model --kind image`: a small random-weight text-to-image pipeline, written without downloads.

A genuine diffusers `StableDiffusionPipeline` (a UNet2DConditionModel, an AutoencoderKL, a CLIPTextModel
with a CLIP BPE tokenizer, a DDIM scheduler), saved with `save_pretrained` in the diffusers layout
(model_index.json and one folder per component), so it loads through the neuron's real image path and
draws a 64x64 image in about a second on a CPU. Only the weights are random: it draws noise, but
deterministically (the same seed, the same image). The tokenizer's vocabulary is built here from the tiny
models' corpus, as CLIP's is: byte-level characters, each also ending a word (`</w>`), then merges.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from pathlib import Path

from neuron.tiny.tokenizer import build_corpus

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77  # CLIP's text length: every Stable Diffusion tokenizer pads and cuts to it
WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokenizer, for the text it lowercases


@dataclass(frozen=True)
class TinyImageSpec:
    dim: int = 32  # the UNet's first block and the text encoder's width
    merges: int = 256
    seed: int = 0

    def validate(self) -> None:
        if self.dim < 32 or self.dim % 32:
            raise ValueError("--dim must be a multiple of 32 (>= 32) for an image model (its norm groups)")


def clip_vocabulary(merges: int, seed: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE files' content: every byte's character alone and ending a word, then `merges` merges
    learnt greedily from the corpus (the commonest pair first, ties by the pair's text, so the same seed
    gives the same files), then the two specials."""
    chars = byte_characters()
    words = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",)
                                for line in build_corpus(seed) for w in WORD.findall(line.lower()))
    learnt: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learnt.append(best)
        words = collections.Counter({_merged(w, best): c for w, c in words.items()})
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(p) for p in learnt), BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, learnt


def byte_characters() -> list[str]:
    """GPT-2's (and CLIP's) printable character for each byte, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _merged(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tokenizer(folder: Path, spec: TinyImageSpec) -> int:
    """CLIPTokenizer's files (vocab.json, merges.txt, its config); returns the vocabulary's size."""
    vocab, merges = clip_vocabulary(spec.merges, spec.seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT, "bos_token": BOS, "eos_token": EOS,
        "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}, indent=2))
    return len(vocab)


def write_tiny_image(out: Path, spec: TinyImageSpec = TinyImageSpec()) -> Path:
    """Write the pipeline's folder to `out` and return it."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec.validate()
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(out / "tokenizer", spec)
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    torch.manual_seed(spec.seed)
    d = spec.dim
    unet = UNet2DConditionModel(
        block_out_channels=(d, 2 * d), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=d, attention_head_dim=8, norm_num_groups=min(32, d))
    vae = AutoencoderKL(block_out_channels=(d, 2 * d), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=min(32, d), sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=d))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out))  # no tiny marker in model_index.json: diffusers warns of any key it does not know
    return out
