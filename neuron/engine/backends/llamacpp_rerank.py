"""Rerank GGUFs on llama.cpp: a context with rank pooling (LLAMA_POOLING_TYPE_RANK), which runs the
model's classification head on each sequence, over the model's own weights.

A pair is framed as llama-server frames it when the GGUF has no rerank prompt template: BOS (if the
vocabulary adds one), the query, EOS (if added; SEP where the vocabulary has no EOS), SEP (if added),
the document, EOS (if added); llama.cpp reads every token as type 0. The head's one logit goes
through a sigmoid, as the torch backend scores a cross-encoder by default, so a model scores alike
as a folder on torch and as a GGUF here (llama-server answers the raw logit). A head of several
outputs (Qwen3-Reranker's, a softmax in the graph) would need its prompt template, which cortex does
not apply yet: such a GGUF is refused at load, naming the engine that serves it.
"""

from __future__ import annotations

import numpy as np

from neuron.engine.backends.base import BackendSpec
from neuron.engine.backends.llamacpp_embed import LlamaEmbedder, LlamaEmbeddingBackend
from neuron.engine.backends.pairs import PairFrame

TOKEN_NULL = -1  # LLAMA_TOKEN_NULL


class LlamaRerankBackend(LlamaEmbeddingBackend):
    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        lib, model = self.llama_cpp, self.model.model
        if lib.llama_model_chat_template(model, b"rerank") is not None or lib.llama_model_n_cls_out(model) != 1:
            self.close()
            raise ValueError("this GGUF ranks through a prompt template (as Qwen3-Reranker does), which the "
                             "in-process llama.cpp backend does not apply; load it with backend llama-server and "
                             "engine_args [\"--reranking\"]")
        self.frame = llama_pair_frame(lib, lib.llama_model_get_vocab(model))

    def _embedder(self) -> LlamaEmbedder:
        lib = self.llama_cpp
        return LlamaEmbedder(lib, self.model, self.context_size, lib.LLAMA_POOLING_TYPE_RANK,
                             width=max(1, lib.llama_model_n_cls_out(self.model.model)))

    def pair_ids(self, query: list[int], document: list[int]) -> tuple[list[int], list[int]]:
        return self.frame.framed(query, document)

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """One relevance score per framed pair: the head's logit through a sigmoid."""
        logits = self.embedder.pooled([ids for ids, _ in pairs])[:, 0]
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        raise RuntimeError("a rerank model does not embed")  # refused before this, by the registry


def llama_pair_frame(lib, vocab) -> PairFrame:
    """llama-server's frame for a pair (its format_prompt_rerank without a template)."""
    eos = lib.llama_vocab_eos(vocab)
    if eos == TOKEN_NULL:
        eos = lib.llama_vocab_sep(vocab)
    add_eos = [eos] if lib.llama_vocab_get_add_eos(vocab) else []
    before = [lib.llama_vocab_bos(vocab)] if lib.llama_vocab_get_add_bos(vocab) else []
    between = add_eos + ([lib.llama_vocab_sep(vocab)] if lib.llama_vocab_get_add_sep(vocab) else [])
    return PairFrame(before, between, list(add_eos))
