"""The llama.cpp backend: GGUF files through llama-cpp-python's low-level generator.

We drive `Llama.generate` token by token and detokenise each token once,
instead of `create_completion(stream=True)`, which re-detokenises the whole
output at every step. Prompt-prefix reuse in the KV cache comes from
`generate` itself.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np

from neuron.catalog import default_context
from neuron.engine.backends.base import Backend, BackendSpec, BackendUnavailable, forced_sequence_check
from neuron.engine.generation import ByteDetokenizer
from neuron.openai_schema import SamplingParams
from neuron.tiny.model import TINY_MARKER_KEY

log = logging.getLogger(__name__)


def _import_llama():
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(
            "the llama.cpp backend needs llama-cpp-python: pip install 'cortex-fleet[llama]'") from exc
    return llama_cpp


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self, spec: BackendSpec):
        llama_cpp = _import_llama()
        self.llama_cpp = llama_cpp
        self.spec = spec
        self.llm = llama_cpp.Llama(model_path=str(spec.path), verbose=False, **self._placement(spec))
        self._vocab = self.llm._model.vocab
        meta = self.llm.metadata
        self.context_size = self.llm.n_ctx()
        self.chat_template = meta.get("tokenizer.chat_template", "")
        self.bos_token = self._special_text(self.llm.token_bos())
        self.eos_token = self._special_text(self.llm.token_eos())
        self.is_tiny = str(meta.get(TINY_MARKER_KEY, "")).lower() == "true"
        self._embedder = None

    def _placement(self, spec: BackendSpec) -> dict:
        gpus = [int(d.split(":")[1]) for d in spec.devices if d.startswith("cuda:")]
        n_ctx = spec.context_size or default_context(spec.path)
        kwargs = {"n_ctx": n_ctx, "n_batch": min(512, n_ctx)}
        if not gpus:
            return {**kwargs, "n_gpu_layers": 0}
        kwargs.update(n_gpu_layers=-1, main_gpu=gpus[0])
        if len(gpus) > 1:
            # llama.cpp splits layers over all visible GPUs by these fractions: ours get equal shares.
            split = [0.0] * (max(gpus) + 1)
            for g in gpus:
                split[g] = 1.0
            kwargs["tensor_split"] = split
        return kwargs

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        # llama_tokenize reads only the vocabulary: safe beside a decode on the device thread.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def is_end(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def detokenizer(self) -> ByteDetokenizer:
        model = self.llm._model
        return ByteDetokenizer(lambda token: model.detokenize([token], special=False))

    def generate_tokens(self, prompt: list[int], params: SamplingParams,
                        forced: list[int] | None = None) -> Iterator[int]:
        llm = self.llm
        llm.set_seed(params.seed & 0xFFFFFFFF if params.seed is not None else random.getrandbits(32))
        processors = self._processors(params, forced)
        return llm.generate(
            prompt, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p, typical_p=1.0,
            temp=params.temperature, repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
            logits_processor=self.llama_cpp.LogitsProcessorList(processors) if processors else None,
        )

    def _processors(self, params: SamplingParams, forced: list[int] | None) -> list:
        processors = []
        if params.logit_bias:
            ids = np.array([t for t in params.logit_bias if 0 <= t < self.llm.n_vocab()], dtype=np.intc)
            biases = np.array([params.logit_bias[int(t)] for t in ids], dtype=np.single)

            def bias(_input_ids, scores):
                scores[ids] += biases
                return scores

            processors.append(bias)
        if forced is not None:
            processors.append(_Forcer(forced))
        return processors

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self._embedder is None:
            # llama.cpp needs a context created in embedding mode. The weights are
            # memory-mapped, so on the CPU the second context shares their pages.
            self._embedder = self.llama_cpp.Llama(
                model_path=str(self.spec.path), embedding=True, verbose=False,
                pooling_type=self.llama_cpp.LLAMA_POOLING_TYPE_MEAN, **self._placement(self.spec))
        return [list(map(float, v)) for v in self._embedder.embed(texts, normalize=True)]

    def close(self) -> None:
        for llm in (self._embedder, self.llm):
            if llm is not None:
                llm.close()
        self._embedder = None


class _Forcer:
    """Logits processor that allows only the next scripted token."""

    def __init__(self, forced: list[int]):
        self.forced = forced
        self.step = 0

    def __call__(self, _input_ids, scores):
        token = forced_sequence_check(self.forced, self.step)
        self.step += 1
        if token is not None:
            keep = scores[token]
            scores[:] = -np.inf
            scores[token] = max(keep, 0.0)
        return scores

