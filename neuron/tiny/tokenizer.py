"""A small, real byte-level BPE tokenizer that needs no download.

Tests must run real tokenisation through both backends, so the tiny model ships
a genuine GPT-2-style BPE (byte-level, same pre-tokenizer regex llama.cpp calls
"gpt-2") trained deterministically on a corpus built into this module.
"""

from __future__ import annotations

import codecs
import json
import random
from dataclasses import dataclass

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

_WORDS = (
    "the a model node gateway token stream load unload memory device fleet request answer "
    "question tool call weather city paris london tokyo temperature sunny rain cloud user "
    "assistant system hello world quick brown fox jumps over lazy dog code python function "
    "json value name arguments result error retry queue latency throughput metrics cortex neuron "
    "is are was be to of and in that have it for not on with as you do at this but his by from "
    "they we say her she or an will my one all would there their what so up out if about who get "
    "which go me when make can like time no just him know take people into year your good some"
).split()


def build_corpus(seed: int = 0, sentences: int = 1500) -> list[str]:
    """Deterministic training text: zen of Python, prose from a word list, JSON and digits."""
    zen = codecs.decode(_ZEN_ROT13, "rot13").splitlines()
    rng = random.Random(seed)
    lines = list(zen)
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        lines.append(line)
    for i in range(200):
        args = {"city": rng.choice(["Paris", "London", "Tokyo"]), "days": i % 7}
        lines.append(json.dumps({"name": "get_weather", "arguments": args}))
        lines.append(f"{i} + {i * 3} = {i * 4}; 0x{i:04x}")
    return lines


def train_tokenizer(vocab_size: int = 512, seed: int = 0):
    """Train the BPE; returns a `tokenizers.Tokenizer`. Same inputs, same vocab and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(seed), trainer=trainer)
    return tok


@dataclass(frozen=True)
class VocabTables:
    """The tokenizer flattened into what GGUF stores: tokens by id, their types, merges."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int


def vocab_tables(tokenizer) -> VocabTables:
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [""] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    normal, control = 1, 3  # gguf.TokenType values
    types = [control if t in SPECIAL_TOKENS else normal for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return VocabTables(tokens, types, merges, vocab[BOS_TOKEN], vocab[EOS_TOKEN])


_ZEN_ROT13 = """Ornhgvshy vf orggre guna htyl.
Rkcyvpvg vf orggre guna vzcyvpvg.
Fvzcyr vf orggre guna pbzcyrk.
Pbzcyrk vf orggre guna pbzcyvpngrq.
Syng vf orggre guna arfgrq.
Fcnefr vf orggre guna qrafr.
Ernqnovyvgl pbhagf.
Fcrpvny pnfrf nera'g fcrpvny rabhtu gb oernx gur ehyrf.
Nygubhtu cenpgvpnyvgl orngf chevgl.
Reebef fubhyq arire cnff fvyragyl.
Hayrff rkcyvpvgyl fvyraprq.
Va gur snpr bs nzovthvgl, ershfr gur grzcgngvba gb thrff.
Abj vf orggre guna arire."""
