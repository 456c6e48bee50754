"""Embedding models on torch: sentence-transformers folders (BERT and kin) through `transformers.AutoModel`.

A sentence-transformers folder says how its vectors are made: `modules.json` lists the steps
(Transformer, Pooling, Normalize), `1_Pooling/config.json` the pooling (cls, mean, max,
mean_sqrt_len, lasttoken; several are concatenated, as sentence-transformers does) and
`sentence_bert_config.json` the longest input it was trained for. We follow those files with
transformers alone, so sentence-transformers need not be installed. A folder without
`modules.json` (a bare encoder) is mean-pooled and normalised. Inputs are batched, sorted by
length so padding stays short, and pooled under the attention mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron.engine.backends.base import Backend, BackendSpec, matryoshka_from_config
from neuron.engine.backends.torch_hf import _encoders, special_frame
from neuron.engine.backends.torch_place import torch_place

BATCH = 32  # inputs per forward pass, as sentence-transformers' default
# The pooling modes we follow, by their key in 1_Pooling/config.json, in the order sentence-transformers
# concatenates them when several are set.
POOLING_MODES = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                 "mean": "pooling_mode_mean_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
                 "lasttoken": "pooling_mode_lasttoken"}
_ST = "sentence_transformers.models."


@dataclass(frozen=True)
class Pipeline:
    """What a sentence-transformers folder says to do after the transformer."""

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_seq_length: int | None = None

    @classmethod
    def read(cls, folder: Path) -> Pipeline:
        """The folder's pipeline; a step we cannot follow fails the load, naming it."""
        modules_file = folder / "modules.json"
        if not modules_file.is_file():
            return cls()  # a bare encoder: mean pooling, normalised
        modules = _json(modules_file)
        kinds = [str(m.get("type", "")).removeprefix(_ST) for m in modules]
        unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if unknown:
            raise ValueError(f"modules.json: the {', '.join(unknown)} step is not supported (cortex follows "
                             "Transformer, Pooling and Normalize)")
        pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        modes = _pooling_modes(_json(folder / pooling["path"] / "config.json")) if pooling else ("mean",)
        config = folder / "sentence_bert_config.json"
        max_len = _json(config).get("max_seq_length") if config.is_file() else None
        return cls(modes, "Normalize" in kinds, max_len if isinstance(max_len, int) and max_len > 0 else None)


def _pooling_modes(config: dict) -> tuple[str, ...]:
    if config.get("pooling_mode_weightedmean_tokens"):
        raise ValueError("1_Pooling/config.json: weightedmean pooling is not supported")
    modes = tuple(mode for mode, key in POOLING_MODES.items() if config.get(key))
    if not modes:
        raise ValueError("1_Pooling/config.json: no pooling mode is set")
    return modes


def _json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read it ({exc})") from exc


class TorchEncoderBackend(Backend):
    name = "torch"

    def __init__(self, spec: BackendSpec):
        if spec.gguf_file:
            raise ValueError("torch opens embedding models from Hugging Face folders; load a GGUF embedding "
                             "model with backend llama.cpp")
        place = torch_place(spec)
        transformers, self.torch, self.device = place.transformers, place.torch, place.device
        self.pipeline = Pipeline.read(spec.path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(spec.path))
        self.model = transformers.AutoModel.from_pretrained(str(spec.path), **place.load_kwargs())
        self.model.eval()
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or 512
        self.context_size = min(spec.context_size or self.pipeline.max_seq_length or positions, positions)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.embedding_dim = config.hidden_size * len(self.pipeline.pooling)
        self.matryoshka_dims = matryoshka_from_config(config.to_dict())
        self._encoders = _encoders(self.tokenizer)
        for encoder in self._encoders.values():  # a tokenizer.json may pad to or cut at a fixed length
            if encoder is not None:
                encoder.no_padding()
                encoder.no_truncation()
        self._prefix, self._suffix = special_frame(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else 0

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        encoder = self._encoders[special]
        if encoder is None:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        return encoder.encode(text, add_special_tokens=False).ids

    def embedding_ids(self, ids: list[int]) -> list[int]:
        return self._prefix + ids + self._suffix

    def detokenizer(self):
        raise RuntimeError("an embedding model does not generate")  # refused before this, by the registry

    def is_end(self, token: int) -> bool:
        return False

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        out = np.empty((len(inputs), self.embedding_dim), dtype=np.float32)
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        with self.torch.inference_mode():
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                out[rows] = self._forward([inputs[i] for i in rows]).cpu().numpy()
        return out

    def _forward(self, batch: list[list[int]]):
        """One padded forward pass (right padding), pooled and normalised per the pipeline."""
        torch = self.torch
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, seq in enumerate(batch):
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        pooled = torch.cat([pool(torch, mode, hidden, mask) for mode in self.pipeline.pooling], dim=1)
        return torch.nn.functional.normalize(pooled, dim=1) if self.pipeline.normalize else pooled

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def pool(torch, mode: str, hidden, mask):
    """One sentence-transformers pooling mode over [batch, tokens, hidden] under a right-padded mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    lengths = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
    if mode == "mean":
        return (hidden * weights).sum(dim=1) / lengths
    if mode == "mean_sqrt_len":
        return (hidden * weights).sum(dim=1) / lengths.sqrt()
    last = mask.sum(dim=1) - 1  # lasttoken
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
