"""The llama.cpp backend: GGUF files, decoded with continuous batching (see `llamacpp_batch`).

The model is opened with llama-cpp-python's low-level API and gets one context
of our own, holding `parallel` sequences, each in a KV cache stream of its own of a context; embeddings
get a second context, in embedding mode, over the same weights (`llamacpp_embed`). Tokens are
detokenised one at a time, once each.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import random

from neuron.engine.backends.base import Backend, BackendSpec, BackendUnavailable, GuidanceTokenizer, gpu_indices
from neuron.engine.backends.llamacpp_batch import LlamaBatcher, batch_tokens, bias_array
from neuron.engine.backends.llamacpp_draft import DraftModel
from neuron.engine.backends.llamacpp_embed import LlamaEmbedder, model_frame
from neuron.engine.backends.llamacpp_log import route_llama_log
from neuron.engine.batching import prefill_chunk
from neuron.engine.generation import ByteDetokenizer
from neuron.server.catalog import default_context, default_parallel
from neuron.server.openai_schema import SamplingParams
from neuron.shared.errors import ApiError
from neuron.tiny.model import TINY_MARKER_KEY

log = logging.getLogger("cortex.neuron.engine.backends.llamacpp")
PENALTY_LAST_N = 64  # llama-cpp-python's default window for repeat/presence/frequency penalties


def _import_llama():
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(
            "the llama.cpp backend needs llama-cpp-python: pip install 'cortex-fleet[llama]'") from exc
    route_llama_log(llama_cpp)  # llama.cpp's own lines in the neuron's log format, at mapped levels
    return llama_cpp


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    batcher_class = LlamaBatcher  # a vision model's evaluates its images first (llamacpp_vision_batch)

    def __init__(self, spec: BackendSpec):
        llama_cpp = _import_llama()
        from llama_cpp._internals import LlamaModel

        self.llama_cpp = llama_cpp
        self.spec = spec
        self.gpus = gpu_indices(spec.devices)
        self._model_params = self._placement()
        # verbose: llama.cpp's lines go to our logger; quiet would point the whole process's stdout and
        # stderr at /dev/null for the load, losing every other thread's log lines meanwhile.
        self.model = LlamaModel(path_model=str(spec.path), params=self._model_params, verbose=True)
        self._vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.slots = spec.parallel or default_parallel(bool(self.gpus))
        chunk = prefill_chunk(bool(self.gpus))
        per_sequence = spec.context_size or default_context(spec.path)
        # One KV stream of a context per slot, not one unified cache: in a unified cache a sequence's new
        # cells land in any free cell, so after drafts are taken back (or a slot is cut for prefix reuse)
        # its cells fall out of position order, and attention sums them in another order: greedy answers
        # then drift under concurrency (SmolLM2, 8 streams with drafts: 1-2 of 8 equal the lone answer;
        # with a stream each, all). A lone sequence also no longer attends over other slots' cells.
        self.ctx = self._new_context(per_sequence * self.slots, batch_tokens(chunk, self.slots))
        meta = self.model.metadata()
        self.context_size = llama_cpp.llama_n_ctx(self.ctx) // self.slots
        self.chat_template = meta.get("tokenizer.chat_template", "")
        self.bos_token = self._special_text(self.model.token_bos())
        self.eos_token = self._special_text(self.model.token_eos())
        self.is_tiny = str(meta.get(TINY_MARKER_KEY, "")).lower() == "true"
        self.batcher = self.batcher_class(llama_cpp, self.ctx, self.slots, chunk, self.make_sampler, self.n_vocab)
        self.batcher.speculative = spec.speculative
        self._embedder = None
        if spec.draft_path is not None and self.batcher.can_draft:
            try:
                self.batcher.draft_model = self._open_draft(spec.draft_path, per_sequence, chunk)
            except BaseException:
                self.close()  # the model opened above is freed, not left to leak with a failed load
                raise
        self._guidance = GuidanceTokenizer(lambda: _guidance_tokenizer(self))

    def _placement(self):
        params = self.llama_cpp.llama_model_default_params()
        gpus = self.gpus
        params.n_gpu_layers = -1 if gpus else 0
        if gpus:
            params.main_gpu = gpus[0]
        if len(gpus) > 1:
            # llama.cpp splits layers over all visible GPUs by these fractions: ours get equal shares.
            self._split = (ctypes.c_float * self.llama_cpp.LLAMA_MAX_DEVICES)()
            for g in gpus:
                self._split[g] = 1.0
            params.tensor_split = self._split
        return params

    def _open_draft(self, path, per_sequence: int, chunk: int) -> DraftModel:
        """The draft model, on the target's devices, in a context of the target's shape; refused (a 400) when
        its vocabulary is not the target's, whose token ids it must speak."""
        from llama_cpp._internals import LlamaModel

        model = LlamaModel(path_model=str(path), params=self._model_params, verbose=True)
        if model.n_vocab() != self.n_vocab:
            model.close()
            raise ApiError(400, "invalid_request_error", f"speculative.draft_model: its vocabulary has "
                           f"{model.n_vocab()} tokens and the model's {self.n_vocab}; a draft model must share "
                           "the model's tokenizer (a smaller model of the same family)", code="draft_mismatch",
                           param="speculative")
        ctx = self._new_context(per_sequence * self.slots, max(chunk, self.slots), model)
        self.batcher.threads.follow(ctx)
        return DraftModel(self.llama_cpp, model, ctx, self.slots, chunk)

    def _new_context(self, n_ctx: int, n_batch: int, model=None):
        lib = self.llama_cpp
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch  # one ubatch: a decode is atomic
        params.n_seq_max, params.kv_unified = self.slots, False  # see __init__: a stream per sequence
        # Every core, for single-token steps too, not llama-cpp-python's half: the thread tuner tries this and
        # its halves and keeps the fastest (on a quiet 2-core machine SmolLM2's lone-stream step takes 16 ms
        # on two threads and 30 on one; with a core held by another process, one wins).
        params.n_threads = params.n_threads_batch = os.cpu_count() or 1
        ctx = lib.llama_init_from_model((model or self.model).model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        return ctx

    def make_sampler(self, params: SamplingParams):
        """The request's sampler chain, all in C: bias, penalties, then greedy or top-k/p, min-p, temperature."""
        lib = self.llama_cpp
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.logit_bias:
            biases, count = bias_array(lib, params.logit_bias, self.n_vocab)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(self.n_vocab, count, biases))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
            self.n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        if params.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        seed = params.seed & 0xFFFFFFFF if params.seed is not None else random.getrandbits(32)
        for sampler in (lib.llama_sampler_init_top_k(params.top_k), lib.llama_sampler_init_top_p(params.top_p, 1),
                        lib.llama_sampler_init_min_p(params.min_p, 1), lib.llama_sampler_init_temp(params.temperature),
                        lib.llama_sampler_init_dist(seed)):
            lib.llama_sampler_chain_add(chain, sampler)
        return chain

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.model.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        # llama_tokenize reads only the vocabulary: safe beside a decode on the device thread.
        return self.model.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def is_end(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def token_bytes(self, token: int) -> bytes:
        return self.model.detokenize([token], special=False)

    def guidance_tokenizer(self):
        return self._guidance.get()

    def detokenizer(self, skip_special: bool = True) -> ByteDetokenizer:
        model, special = self.model, not skip_special
        return ByteDetokenizer(lambda token: model.detokenize([token], special=special))

    # -- embeddings: mean pooling in a context of their own (see llamacpp_embed) -------------------
    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @property
    def embedding_dim(self) -> int:
        return self.llama_cpp.llama_model_n_embd(self.model.model)

    @functools.cached_property
    def _frame(self) -> tuple[list[int], list[int]]:
        return model_frame(self.model)

    def embedding_ids(self, ids: list[int]) -> list[int]:
        prefix, suffix = self._frame
        return prefix + ids + suffix

    def embed(self, inputs: list[list[int]]):
        if self._embedder is None:
            self._embedder = LlamaEmbedder(self.llama_cpp, self.model, self.context_size,
                                           self.llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        return self._embedder.embed(inputs)

    def close(self) -> None:
        self.batcher.close()
        if self.batcher.draft_model is not None:
            self.batcher.draft_model.close()
            self.batcher.draft_model = None
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self.ctx:
            self.llama_cpp.llama_free(self.ctx)
            self.ctx = None
        self.model.close()


def _guidance_tokenizer(backend: LlamaCppBackend):
    """llguidance's view of the GGUF's vocabulary (read once, about 0.3 s for 49k tokens)."""
    import llguidance.llamacpp

    return llguidance.llamacpp.lltokenizer_from_vocab(backend._vocab, n_vocab=backend.n_vocab)
