"""Embeddings on llama.cpp: a context in embedding mode over the model's own weights, and the
backend for GGUF embedding models (BERT and kin), which have nothing else.

A generation context cannot pool, so a chat model's embeddings get a context of their own, made
on the first embeddings request over the same loaded model (no second copy of the weights). Inputs
arrive as framed token ids; several go into one `llama_decode` as sequences of a batch, each
pooled by llama.cpp. A pooled sequence must sit in one micro-batch whole, so the micro-batch is
a whole context: an input the context holds is embedded whole, never cut (llama-cpp-python's
`Llama.embed` cuts inputs to its batch size without a word).
"""

from __future__ import annotations

import os

import numpy as np

from neuron.engine.backends.base import Backend, BackendSpec, gpu_indices, split_frame
from neuron.server.catalog import default_context

MAX_SEQUENCES = 32  # inputs pooled in one decode


def model_frame(model) -> tuple[list[int], list[int]]:
    """The special tokens llama.cpp's tokenizer puts around a text (BOS; [CLS] and [SEP])."""
    return split_frame(model.tokenize(b"a", add_bos=False, special=False),
                       model.tokenize(b"a", add_bos=True, special=False))


class LlamaEmbedder:
    def __init__(self, lib, model, n_ctx: int, pooling: int, width: int | None = None):
        """`width`: the values each pooled row has (a rank head's n_cls_out), the model's n_embd if None."""
        from llama_cpp._internals import LlamaBatch

        self.lib = lib
        self.n_ctx = n_ctx
        self.n_embd = width or lib.llama_model_n_embd(model.model)
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, n_ctx
        params.n_seq_max, params.kv_unified = MAX_SEQUENCES, True  # unified: any input may use the whole context
        params.embeddings, params.pooling_type = True, pooling
        params.n_threads = max((os.cpu_count() or 2) // 2, 1)  # as the generation context
        params.n_threads_batch = os.cpu_count() or 1
        self.ctx = lib.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create an embedding context (out of memory?)")
        self.batch = LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """One L2-normalised row per input, each at most n_ctx tokens."""
        out = self.pooled(inputs)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def pooled(self, inputs: list[list[int]]) -> np.ndarray:
        """One row per input as llama.cpp pools it (under rank pooling: the rank head's outputs)."""
        out = np.empty((len(inputs), self.n_embd), dtype=np.float32)
        group: list[int] = []
        tokens = 0
        for i, ids in enumerate(inputs):
            if group and (tokens + len(ids) > self.n_ctx or len(group) == MAX_SEQUENCES):
                self._decode(inputs, group, out)
                group, tokens = [], 0
            group.append(i)
            tokens += len(ids)
        self._decode(inputs, group, out)
        return out

    def _decode(self, inputs: list[list[int]], group: list[int], out: np.ndarray) -> None:
        lib = self.lib
        memory = lib.llama_get_memory(self.ctx)
        if memory:  # encoders keep no cache; decoders' cells from the last group go
            lib.llama_memory_clear(memory, True)
        self.batch.reset()
        for seq, i in enumerate(group):
            self.batch.add_sequence(inputs[i], seq, True)  # in embedding mode every token is an output
        code = lib.llama_decode(self.ctx, self.batch.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for an embeddings batch")
        for seq, i in enumerate(group):
            out[i] = np.ctypeslib.as_array(lib.llama_get_embeddings_seq(self.ctx, seq), shape=(self.n_embd,))

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        self.batch.close()


class LlamaEmbeddingBackend(Backend):
    """A GGUF embedding model (its metadata names a pooling, or non-causal attention): an embedding
    context only, pooled as the model says (mean, cls, last), L2-normalised as llama.cpp's server does."""

    name = "llama.cpp"

    def __init__(self, spec: BackendSpec):
        import llama_cpp as lib  # imported (its log routed, or refused by name) by `backend_class`
        from llama_cpp._internals import LlamaModel

        self.llama_cpp = lib
        gpus = gpu_indices(spec.devices)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = -1 if gpus else 0
        if gpus:  # a small model: whole on the first device, never spread over GPUs this node does not own
            params.main_gpu, params.split_mode = gpus[0], lib.LLAMA_SPLIT_MODE_NONE
        self.model = LlamaModel(path_model=str(spec.path), params=params, verbose=True)  # see LlamaCppBackend
        trained = lib.llama_model_n_ctx_train(self.model.model)
        self.context_size = min(spec.context_size or default_context(spec.path), trained)
        self.vocab_size = self.model.n_vocab()
        self.embedding_dim = lib.llama_model_n_embd(self.model.model)
        self._prefix, self._suffix = model_frame(self.model)
        self.embedder = self._embedder()

    def _embedder(self) -> LlamaEmbedder:
        """The context that pools: as the model's metadata says (UNSPECIFIED reads its pooling type)."""
        return LlamaEmbedder(self.llama_cpp, self.model, self.context_size,
                             self.llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def embedding_ids(self, ids: list[int]) -> list[int]:
        return self._prefix + ids + self._suffix

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        return self.embedder.embed(inputs)

    def detokenizer(self):
        raise RuntimeError("an embedding model does not generate")  # refused before this, by the registry

    def is_end(self, token: int) -> bool:
        return False

    def close(self) -> None:
        self.embedder.close()
        self.model.close()
