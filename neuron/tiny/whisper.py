"""`cortex tiny-model --kind transcribe`: a small random-weight Whisper, written without downloads.

A genuine `WhisperForConditionalGeneration` (two encoder and two decoder layers, 64 wide) with a
real Whisper tokenizer and feature extractor, so it loads through the neuron's real transcription
path (`AutoProcessor`, `generate` with languages, prompts and timestamps) in seconds on a CPU. The
tokenizer is built here as Whisper's is laid out: a byte-level BPE (trained on the tiny models'
corpus), then `<|endoftext|>`, `<|startoftranscript|>`, every language transformers knows, the task
tokens, `<|notimestamps|>` and the 1501 timestamp tokens `<|0.00|>`..`<|30.00|>` right after it, with
the generation config a Whisper checkpoint ships (language and task ids, timestamp and suppression
settings). Only the weights are random: the text is garbage, but real tokens, and deterministic (the
same seed, the same model; greedy decoding, the same text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from neuron.tiny.model import TINY_MARKER_KEY
from neuron.tiny.tokenizer import build_corpus

EOT = "<|endoftext|>"
TASKS = ("<|translate|>", "<|transcribe|>")
AFTER_TASKS = ("<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")
TIMESTAMPS = 1501  # <|0.00|> to <|30.00|>, a step of 0.02 s
MAX_NEW_TOKENS = 16  # per 30-second window: a second of audio transcribes in well under a second on a CPU


@dataclass(frozen=True)
class TinyWhisperSpec:
    layers: int = 2
    dim: int = 64
    vocab: int = 512  # byte-level BPE pieces before Whisper's special tokens
    seed: int = 0

    def validate(self) -> None:
        if self.layers < 1 or self.dim < 16 or self.dim % 16:
            raise ValueError("--layers must be >= 1 and --dim a multiple of 16 (>= 16)")
        if self.vocab < 300:
            raise ValueError("--vocab must be at least 300")


def special_tokens() -> list[str]:
    """Whisper's special tokens in its order; the timestamps follow the last one."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [EOT, "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), *TASKS, *AFTER_TASKS]


def build_tokenizer(spec: TinyWhisperSpec):
    """A `WhisperTokenizer` over a BPE trained on the tiny corpus, Whisper's specials and timestamps added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, WhisperTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(build_corpus(spec.seed), trainer=trainer)
    data = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    tokenizer = WhisperTokenizer(vocab=data["vocab"], merges=merges)
    specials = special_tokens()
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in specials]})
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", normalized=False, special=False)
                          for i in range(TIMESTAMPS)])
    return tokenizer


def generation_config(tokenizer):
    """What a multilingual Whisper checkpoint's generation_config.json holds, with this vocabulary's ids."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    eot = ids(EOT)
    space = tokenizer.encode(" ", add_special_tokens=False)
    return GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        is_multilingual=True, lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES},
        task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        forced_decoder_ids=[[1, None], [2, ids("<|transcribe|>")]], return_timestamps=False,
        max_initial_timestamp_index=50, suppress_tokens=[], begin_suppress_tokens=[*space[:1], eot],
        max_length=448, max_new_tokens=MAX_NEW_TOKENS)


def write_tiny_whisper(out: Path, spec: TinyWhisperSpec = TinyWhisperSpec()) -> Path:
    """Write the model, its processor (tokenizer and feature extractor) and generation config to `out`."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    spec.validate()
    tokenizer = build_tokenizer(spec)
    gen = generation_config(tokenizer)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=spec.dim, encoder_layers=spec.layers,
        decoder_layers=spec.layers, encoder_attention_heads=max(1, spec.dim // 16),
        decoder_attention_heads=max(1, spec.dim // 16), encoder_ffn_dim=spec.dim * 2, decoder_ffn_dim=spec.dim * 2,
        max_source_positions=1500, max_target_positions=448, decoder_start_token_id=gen.decoder_start_token_id,
        bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id, pad_token_id=gen.pad_token_id,
        architectures=["WhisperForConditionalGeneration"])
    torch.manual_seed(spec.seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = gen
    setattr(model.config, TINY_MARKER_KEY, True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer) \
        .save_pretrained(str(out))
    return out
