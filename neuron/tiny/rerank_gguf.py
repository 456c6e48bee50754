"""`cortex tiny-model --kind rerank --format gguf`: the tiny cross-encoder as a rerank GGUF for llama.cpp.

The same weights and WordPiece vocabulary as the folder `neuron.tiny.rerank` writes, in the layout
llama.cpp reads for a BERT reranker: rank pooling, the pooler as the `cls` head (dense and tanh, as
BertForSequenceClassification applies it) and the classifier as `cls.output`, the vocabulary in its
phantom-space form, [CLS] as BOS and [SEP] as EOS, both added, so llama.cpp frames a pair as BERT does:
[CLS] query [SEP] document [SEP].
"""

from __future__ import annotations

from pathlib import Path

from neuron.tiny.model import TINY_MARKER_KEY
from neuron.tiny.rerank import SPECIALS, TinyRerankSpec, make_weights, train_wordpiece

# HF tensor names (without "bert.") to llama.cpp's, per layer where {i} appears.
LAYER_NAMES = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
               "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
               "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm"}
TOP_NAMES = {"embeddings.word_embeddings": "token_embd", "embeddings.token_type_embeddings": "token_types",
             "embeddings.position_embeddings": "position_embd", "embeddings.LayerNorm": "token_embd_norm",
             "pooler.dense": "cls", "classifier": "cls.output"}


def write_tiny_rerank_gguf(out: Path, spec: TinyRerankSpec = TinyRerankSpec()) -> Path:
    """Write the cross-encoder as one GGUF file at `out` (.gguf added) and return its path."""
    import gguf

    spec.validate()
    out = out if out.suffix == ".gguf" else out.with_suffix(".gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(spec.vocab, spec.seed)
    writer = gguf.GGUFWriter(str(out), "bert")
    _metadata(writer, spec, gguf)
    _vocabulary(writer, tokenizer, gguf)
    for name, tensor in make_weights(spec, tokenizer.get_vocab_size()).items():
        writer.add_tensor(gguf_name(name), tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_name(hf_name: str) -> str:
    base, _, suffix = hf_name.removeprefix("bert.").rpartition(".")
    if base.startswith("encoder.layer."):
        index, _, rest = base.removeprefix("encoder.layer.").partition(".")
        return f"blk.{index}.{LAYER_NAMES[rest]}.{suffix}"
    return f"{TOP_NAMES[base]}.{suffix}"


def _metadata(writer, spec: TinyRerankSpec, gguf) -> None:
    writer.add_name("cortex-tiny-rerank")
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.dim)
    writer.add_feed_forward_length(spec.dim * 2)
    writer.add_block_count(spec.layers)
    writer.add_head_count(spec.heads)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_classifier_output_labels(["LABEL_0"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool(TINY_MARKER_KEY, True)


def _vocabulary(writer, tokenizer, gguf) -> None:
    by_id = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = [token in SPECIALS for token in by_id]
    writer.add_token_type_count(2)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t if s else t[2:] if t.startswith("##") else "\u2581" + t
                           for t, s in zip(by_id, special, strict=True)])
    writer.add_token_types([gguf.TokenType.CONTROL if s else gguf.TokenType.NORMAL for s in special])
    ids = {token: tokenizer.token_to_id(token) for token in SPECIALS}
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)
