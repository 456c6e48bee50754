"""`cortex tiny-model --kind rerank`: a small random-weight cross-encoder, written without downloads.

A genuine `BertForSequenceClassification` of one label with a real WordPiece tokenizer (built from
the tiny models' corpus, framing a pair as BERT does: [CLS] query [SEP] document [SEP],
token types 0 then 1), saved as sentence-transformers' CrossEncoder saves one, so it loads through
the neuron's real rerank path in seconds on a CPU. Only the weights are random: its scores order
documents arbitrarily, but deterministically (the same seed, the same model). `neuron.tiny.rerank_gguf`
writes the same model as a rerank GGUF.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron.tiny.model import TINY_MARKER_KEY
from neuron.tiny.tokenizer import build_corpus

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class TinyRerankSpec:
    layers: int = 2
    dim: int = 64
    vocab: int = 512
    seed: int = 0
    context: int = 512

    @property
    def heads(self) -> int:
        return max(1, self.dim // 16)

    def validate(self) -> None:
        if self.layers < 1 or self.dim < 16 or self.dim % 16:
            raise ValueError("--layers must be >= 1 and --dim a multiple of 16 (>= 16)")
        if self.vocab < 300:
            raise ValueError("--vocab must be at least 300")


def train_wordpiece(vocab_size: int, seed: int):
    """A BERT-style uncased WordPiece tokenizer (`tokenizers.Tokenizer`) with BERT's pair template.

    Its vocabulary is built here rather than by tokenizers' WordPieceTrainer, whose order among words of
    equal count changes from run to run: the specials, every character of the corpus alone and as a
    continuation (`##c`), then its commonest words, so the same seed gives the same ids, the folder's and
    the GGUF's alike."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = collections.Counter(word for line in build_corpus(seed)
                                for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted({c for word in words for c in word})
    pieces = [*SPECIALS, *chars, *("##" + c for c in chars)]
    ranked = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if len(w) > 1]
    pieces += ranked[:max(0, vocab_size - len(pieces))]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def make_weights(spec: TinyRerankSpec, vocab_size: int) -> dict[str, np.ndarray]:
    """HF-named float32 tensors of a BertForSequenceClassification, from a seeded generator. The head's
    weights are large, so that documents' scores lie well apart; both token types embed alike, so that
    llama.cpp (which reads every token as type 0) scores the GGUF copy as transformers scores this one."""
    rng = np.random.default_rng(spec.seed)

    def normal(*shape, std=0.02):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    d, ffn = spec.dim, spec.dim * 2
    w = {"bert.embeddings.word_embeddings.weight": normal(vocab_size, d, std=1.0),
         "bert.embeddings.position_embeddings.weight": normal(spec.context, d),
         "bert.embeddings.token_type_embeddings.weight": np.repeat(normal(1, d, std=0.5), 2, axis=0)}
    _norm(w, "bert.embeddings.LayerNorm", d)
    for i in range(spec.layers):
        p = f"bert.encoder.layer.{i}."
        for name, shape in (("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                            ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                            ("intermediate.dense", (ffn, d)), ("output.dense", (d, ffn))):
            w[p + name + ".weight"], w[p + name + ".bias"] = normal(*shape), np.zeros(shape[0], np.float32)
        _norm(w, p + "attention.output.LayerNorm", d)
        _norm(w, p + "output.LayerNorm", d)
    w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"] = normal(d, d, std=0.5), np.zeros(d, np.float32)
    w["classifier.weight"], w["classifier.bias"] = normal(1, d, std=1.0), np.zeros(1, np.float32)
    return w


def _norm(w: dict, prefix: str, d: int) -> None:
    w[prefix + ".weight"], w[prefix + ".bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)


def write_tiny_rerank(out: Path, spec: TinyRerankSpec = TinyRerankSpec()) -> Path:
    """Write the cross-encoder's folder to `out` and return it."""
    from safetensors.numpy import save_file

    spec.validate()
    tokenizer = train_wordpiece(spec.vocab, spec.seed)
    vocab_size = tokenizer.get_vocab_size()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "hidden_size": spec.dim, "intermediate_size": spec.dim * 2, "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads, "max_position_embeddings": spec.context, "type_vocab_size": 2,
        "vocab_size": vocab_size, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "torch_dtype": "float32",
        "pad_token_id": tokenizer.token_to_id("[PAD]"), "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        # As sentence-transformers' CrossEncoder writes it: scores through a sigmoid.
        "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"},
        TINY_MARKER_KEY: True,
    })
    tokenizer.save(str(out / "tokenizer.json"))
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (out / "vocab.txt").write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": spec.context,
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "mask_token": "[MASK]"})
    save_file(make_weights(spec, vocab_size), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
