"""The torch backend: Hugging Face safetensors models through transformers.

Generation is a hand-driven decode loop over a KV cache rather than
`model.generate`, so tokens come out one at a time, lazily, and the loop stops
the moment the consumer stops asking.
"""

from __future__ import annotations

import functools
import json
import logging

from neuron.engine.backends.base import (
    Backend,
    BackendSpec,
    GuidanceTokenizer,
    matryoshka_from_config,
    split_frame,
)
from neuron.engine.backends.torch_batch import TorchBatcher
from neuron.engine.backends.torch_place import _import_torch, _placement_kwargs, torch_place  # noqa: F401 - re-exported
from neuron.engine.batching import prefill_chunk
from neuron.server.catalog import default_parallel
from neuron.server.openai_schema import SamplingParams
from neuron.tiny.model import TINY_MARKER_KEY

log = logging.getLogger("cortex.neuron.engine.backends.torch_hf")


def _encoders(tokenizer) -> dict[bool, object | None]:
    """Two copies of the fast tokenizer for encoding, one parsing control tokens and one not.

    Copies, because the tokenizer threads encode while the device thread decodes with the
    original, and the switch between the two modes is a mutation that Rust's borrow checks
    refuse under concurrent use ("Already borrowed")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {True: None, False: None}
    from tokenizers import Tokenizer

    special, plain = Tokenizer.from_str(backend.to_str()), Tokenizer.from_str(backend.to_str())
    special.encode_special_tokens, plain.encode_special_tokens = False, True
    for copy in (special, plain):  # a tokenizer.json may carry truncation (MiniLM's: 128) or padding: a prompt
        copy.no_truncation()       # must never be cut or padded silently; the context check bounds it
        copy.no_padding()
    return {True: special, False: plain}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, spec: BackendSpec):
        place = torch_place(spec)
        torch, transformers, gpus = place.torch, place.transformers, place.gpus
        self.torch, self.device = torch, place.device
        load_kwargs = place.load_kwargs()
        if spec.gguf_file:
            load_kwargs["gguf_file"] = spec.gguf_file
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(spec.path), **_gguf_only(load_kwargs))
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(spec.path), **load_kwargs)
        self.model.eval()
        config = self.model.config
        self.context_size = min(spec.context_size or 1 << 30, getattr(config, "max_position_embeddings", 4096))
        self.chat_template = getattr(self.tokenizer, "chat_template", None) or ""
        self.bos_token = self.tokenizer.bos_token or ""
        self.eos_token = self.tokenizer.eos_token or ""
        self.is_tiny = bool(getattr(config, TINY_MARKER_KEY, False)) or _config_flag(spec)
        self._end_ids = _end_token_ids(self.model, self.tokenizer)
        self._encoders = _encoders(self.tokenizer)
        self.slots = spec.parallel or default_parallel(bool(gpus))
        self.batcher = TorchBatcher(self, self.slots, prefill_chunk(bool(gpus)))
        self.batcher.speculative = spec.speculative
        self.n_vocab = self.model.get_output_embeddings().out_features  # the logits' width (may pad the vocab)
        self._guidance = GuidanceTokenizer(self._build_guidance)

    def new_cache(self, layers=None):
        """A KV cache for this model, empty or from (keys, values) per layer."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def sampler(self, params: SamplingParams) -> TorchSampler:
        torch = self.torch
        gen = torch.Generator(device=self.device)
        gen.manual_seed(params.seed % (2**63) if params.seed is not None else torch.seed())
        return TorchSampler(torch, params, gen, self._end_ids)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        encoder = self._encoders[special]
        if encoder is None:  # a slow (pure Python) tokenizer: no separate copies to be had
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        return encoder.encode(text, add_special_tokens=False).ids

    def is_end(self, token: int) -> bool:
        return token in self._end_ids

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.decode([token]).encode("utf-8")

    def guidance_tokenizer(self):
        return self._guidance.get()

    def _build_guidance(self):
        import llguidance.hf

        return llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.n_vocab)

    def detokenizer(self, skip_special: bool = True):
        return HFDetokenizer(self.tokenizer, skip_special)

    # -- embeddings: mean of the last hidden state, L2-normalised --------------------------------
    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def matryoshka_dims(self) -> tuple[int, ...] | None:
        return matryoshka_from_config(self.model.config.to_dict())

    @functools.cached_property
    def _frame(self) -> tuple[list[int], list[int]]:
        return special_frame(self.tokenizer)

    def embedding_ids(self, ids: list[int]) -> list[int]:
        prefix, suffix = self._frame
        return prefix + ids + suffix

    def embed(self, inputs: list[list[int]]):
        torch = self.torch
        rows = []
        with torch.inference_mode():
            for ids in inputs:  # one at a time: no padding to get wrong under a causal mask
                out = self.model.base_model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)
                rows.append(torch.nn.functional.normalize(out.last_hidden_state[0].float().mean(dim=0), dim=0))
        return torch.stack(rows).cpu().numpy()

    def close(self) -> None:
        self.batcher.close()
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text."""
    return split_frame(tokenizer("a", add_special_tokens=False)["input_ids"],
                       tokenizer("a", add_special_tokens=True)["input_ids"])


def _gguf_only(kwargs: dict) -> dict:
    return {"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}


def _config_flag(spec: BackendSpec) -> bool:
    try:
        return bool(json.loads((spec.path / "config.json").read_text()).get(TINY_MARKER_KEY))
    except (OSError, ValueError):
        return False


def _end_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class HFDetokenizer:
    """Incremental detokenisation with the fast tokenizer's DecodeStream."""

    def __init__(self, tokenizer, skip_special: bool = True):
        from tokenizers.decoders import DecodeStream

        self.inner = tokenizer.backend_tokenizer
        self.stream = DecodeStream(skip_special_tokens=skip_special)

    def step(self, token: int) -> str:
        return self.stream.step(self.inner, token) or ""

    def flush(self) -> str:
        return ""


class TorchSampler:
    """Temperature, top-k, top-p, min-p, logit bias, repetition penalties and min_tokens on a logits row."""

    def __init__(self, torch, params: SamplingParams, generator, end_ids: set[int] = frozenset()):
        self.torch = torch
        self.p = params
        self.gen = generator
        self.end_ids = sorted(end_ids)
        self.counts: dict[int, int] = {}
        self.generated = 0

    def seen(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1
        self.generated += 1

    def sample(self, logits) -> int:
        torch, p = self.torch, self.p
        logits = self._biased(logits)
        if self.generated < p.min_tokens:
            logits = self._held(logits)
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            probs = _top_p(torch, probs, p.top_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.gen))

    def _biased(self, logits):
        p = self.p
        if p.logit_bias:
            logits = logits.clone()
            for tok, bias in p.logit_bias.items():
                if 0 <= tok < logits.numel():
                    logits[tok] += bias
        if self.counts and (p.presence_penalty or p.frequency_penalty or p.repeat_penalty != 1.0):
            logits = logits.clone()
            idx = self.torch.tensor(list(self.counts), device=logits.device)
            cnt = self.torch.tensor(list(self.counts.values()), device=logits.device, dtype=logits.dtype)
            vals = logits[idx]
            if p.repeat_penalty != 1.0:
                vals = self.torch.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
            logits[idx] = vals - p.presence_penalty - p.frequency_penalty * cnt
        return logits


    def _held(self, logits):
        """min_tokens: the end tokens get no chance, unless nothing else is allowed (a grammar that must end)."""
        held = logits.clone()
        held[[t for t in self.end_ids if t < held.numel()]] = float("-inf")
        return held if bool(self.torch.isfinite(held).any()) else logits


def _top_p(torch, probs, top_p: float):
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    drop = cumulative - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(0, order, sorted_probs)
