"""`cortex tiny-model`: small random-weight Llama models, written without downloads.

Machines here reach no model hub, yet tests must run real inference through
llama.cpp and transformers. The model is a genuine Llama architecture with a
real BPE tokenizer and a ChatML chat template; only the weights are random.
The same seed gives the same weights in both formats: the GGUF copy applies the
Q/K row permutation llama.cpp's rope layout expects, as convert_hf_to_gguf does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron.engine.chat_template import TEMPLATES
from neuron.tiny.tokenizer import BOS_TOKEN, EOS_TOKEN, train_tokenizer, vocab_tables

# Marks a model as ours, so the neuron can enable test-only behaviour (scripted
# output) on tiny models and never on a real one.
TINY_MARKER_KEY = "cortex.tiny_model"


@dataclass(frozen=True)
class TinySpec:
    layers: int = 2
    dim: int = 64
    vocab: int = 512
    seed: int = 0
    context: int = 2048
    template: str = "chatml-tools"  # a key of chat_template.TEMPLATES: "chatml" has no tool support
    split_tensors: int = 0  # GGUF only: a split file of at most this many tensors per part (0: one file)

    @property
    def chat_template(self) -> str:
        return TEMPLATES[self.template]

    @property
    def heads(self) -> int:
        return max(1, self.dim // 16)

    @property
    def kv_heads(self) -> int:
        return max(1, self.heads // 2)

    @property
    def ffn(self) -> int:
        return self.dim * 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def validate(self) -> None:
        if self.layers < 1 or self.dim < 16 or self.dim % 16:
            raise ValueError("--layers must be >= 1 and --dim a multiple of 16 (>= 16)")
        if self.vocab < 300:
            raise ValueError("--vocab must be at least 300 (256 byte tokens + specials + merges)")


def make_weights(spec: TinySpec, vocab_size: int) -> dict[str, np.ndarray]:
    """HF-named float32 tensors drawn from a seeded generator."""
    rng = np.random.default_rng(spec.seed)

    def normal(*shape, std=0.02):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    d, kv = spec.dim, spec.kv_heads * spec.head_dim
    w = {"model.embed_tokens.weight": normal(vocab_size, d, std=1.0)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(d, d)
        w[p + "self_attn.k_proj.weight"] = normal(kv, d)
        w[p + "self_attn.v_proj.weight"] = normal(kv, d)
        w[p + "self_attn.o_proj.weight"] = normal(d, d)
        w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "mlp.gate_proj.weight"] = normal(spec.ffn, d)
        w[p + "mlp.up_proj.weight"] = normal(spec.ffn, d)
        w[p + "mlp.down_proj.weight"] = normal(d, spec.ffn)
    w["model.norm.weight"] = np.ones(d, np.float32)
    w["lm_head.weight"] = normal(vocab_size, d, std=0.5)
    return w


def write_tiny_model(out: Path, fmt: str, spec: TinySpec = TinySpec()) -> Path:
    """Write the model to `out` (a .gguf file or an HF directory) and return the path."""
    spec.validate()
    tokenizer = train_tokenizer(spec.vocab, spec.seed)
    weights = make_weights(spec, tokenizer.get_vocab_size())
    if fmt == "gguf":
        return _write_gguf(out, spec, tokenizer, weights)
    if fmt == "hf":
        return _write_hf(out, spec, tokenizer, weights)
    raise ValueError(f"unknown format {fmt!r}: expected 'gguf' or 'hf'")


def _permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_tensors(spec: TinySpec, w: dict[str, np.ndarray]):
    yield "token_embd.weight", w["model.embed_tokens.weight"]
    names = {
        "input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        yield f"blk.{i}.attn_q.weight", _permute_for_rope(w[p + "self_attn.q_proj.weight"], spec.heads)
        yield f"blk.{i}.attn_k.weight", _permute_for_rope(w[p + "self_attn.k_proj.weight"], spec.kv_heads)
        for hf, gg in names.items():
            yield f"blk.{i}.{gg}.weight", w[p + hf + ".weight"]
    yield "output_norm.weight", w["model.norm.weight"]
    yield "output.weight", w["lm_head.weight"]


def _write_gguf(out: Path, spec: TinySpec, tokenizer, weights) -> Path:
    import gguf

    out = out if out.suffix == ".gguf" else out.with_suffix(".gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tables = vocab_tables(tokenizer)
    # Split as llama.cpp's gguf-split does: OUT-00001-of-0000N.gguf and so on, opened through the first part.
    writer = gguf.GGUFWriter(str(out), "llama", split_max_tensors=spec.split_tensors)
    writer.add_name(out.stem)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.dim)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tables.tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tables.tokens)
    writer.add_token_types(tables.token_types)
    writer.add_token_merges(tables.merges)
    writer.add_bos_token_id(tables.bos_id)
    writer.add_eos_token_id(tables.eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(spec.chat_template)
    writer.add_bool(TINY_MARKER_KEY, True)
    for name, tensor in _gguf_tensors(spec, weights):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parts = sorted(out.parent.glob(f"{out.stem}-00001-of-*.gguf"))
    return parts[0] if spec.split_tensors and parts else out


def _write_hf(out: Path, spec: TinySpec, tokenizer, weights) -> Path:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tables = vocab_tables(tokenizer)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.dim, "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim,
        "max_position_embeddings": spec.context, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": len(tables.tokens), "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": tables.bos_id, "eos_token_id": tables.eos_id, "hidden_act": "silu",
        TINY_MARKER_KEY: True,
    }
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": tables.bos_id, "eos_token_id": [tables.eos_id, tables.bos_id],
    })
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN, "pad_token": BOS_TOKEN, "add_bos_token": False,
        "model_max_length": spec.context, "chat_template": spec.chat_template,
    })
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
