"""Rerank models on torch: cross-encoders (`*ForSequenceClassification`, one label) through transformers.

A cross-encoder reads the query and a document as one input, framed as its tokenizer frames a
pair ([CLS] query [SEP] document [SEP], with token types 0 then 1, for BERT; <s> query </s></s>
document </s> for RoBERTa and XLM-R), and its head gives one logit. The score is that logit put
through the activation sentence-transformers' CrossEncoder applies by default: a sigmoid for one
label, so scores lie in (0, 1) as vLLM and Jina answer them, unless the folder's config names
another (`sentence_transformers.activation_fn`, or the older `sbert_ce_default_activation_function`:
Identity gives the raw logit, as some rerankers ship).
"""

from __future__ import annotations

import numpy as np

from neuron.engine.backends.base import Backend, BackendSpec
from neuron.engine.backends.pairs import hf_pair_frame
from neuron.engine.backends.torch_hf import _encoders
from neuron.engine.backends.torch_place import torch_place

BATCH = 32  # pairs per forward pass, as sentence-transformers' CrossEncoder.predict
ACTIVATIONS = ("Sigmoid", "Identity", "Tanh")


def activation_of(config: dict) -> str:
    """The activation sentence-transformers would apply: the config's own, else a sigmoid (one label)."""
    named = (config.get("sentence_transformers") or {}).get("activation_fn") \
        or config.get("sbert_ce_default_activation_function") or "Sigmoid"
    name = str(named).rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ValueError(f"config.json: the {named} activation is not supported (cortex applies "
                         f"{', '.join(ACTIVATIONS)})")
    return name


class TorchRerankBackend(Backend):
    name = "torch"

    def __init__(self, spec: BackendSpec):
        if spec.gguf_file:
            raise ValueError("torch opens rerank models from Hugging Face folders; load a rerank GGUF with "
                             "backend llama.cpp")
        place = torch_place(spec)
        transformers, self.torch, self.device = place.transformers, place.torch, place.device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(spec.path))
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(spec.path), **place.load_kwargs())
        self.model.eval()
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or 512
        self.context_size = min(spec.context_size or positions, positions)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.activation = activation_of(config.to_dict())
        self.frame = hf_pair_frame(self.tokenizer)
        self._types = "token_type_ids" in self.tokenizer.model_input_names
        self._encoders = _encoders(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else 0

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        encoder = self._encoders[special]
        if encoder is None:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        return encoder.encode(text, add_special_tokens=False).ids

    def pair_ids(self, query: list[int], document: list[int]) -> tuple[list[int], list[int]]:
        return self.frame.framed(query, document)

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """One relevance score per framed pair (ids, token types), float32, in the pairs' order."""
        out = np.empty(len(pairs), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # similar lengths pad little
        with self.torch.inference_mode():
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                out[rows] = self._forward([pairs[i] for i in rows]).cpu().numpy()
        return out

    def _forward(self, batch: list[tuple[list[int], list[int]]]):
        """One right-padded forward pass: the head's logit, through the activation."""
        torch = self.torch
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (seq, kinds) in enumerate(batch):
            ids[r, :len(seq)], types[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), torch.tensor(kinds), 1
        extra = {"token_type_ids": types.to(self.device)} if self._types else {}
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **extra).logits
        logits = logits[:, 0].float()
        if self.activation == "Sigmoid":
            return torch.sigmoid(logits)
        return torch.tanh(logits) if self.activation == "Tanh" else logits

    def detokenizer(self, skip_special: bool = True):
        raise RuntimeError("a rerank model does not generate")  # refused before this, by the registry

    def is_end(self, token: int) -> bool:
        return False

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        raise RuntimeError("a rerank model does not embed")  # refused before this, by the registry

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
