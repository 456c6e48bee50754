"""What every backend provides. Methods are called on the device's worker thread only."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron.engine.generation import Detokenizer
from neuron.shared.speculative import SpecConfig


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed; the message says which extra to install."""


@dataclass
class BackendSpec:
    """What a backend needs to open a model."""

    path: Path
    format: str  # "gguf" | "hf"
    devices: list[str]  # "cpu" or "cuda:N"
    context_size: int | None = None
    parallel: int | None = None  # sequences decoded at once (continuous batching); None: a default
    gguf_file: str | None = None  # for torch loading a GGUF inside a directory
    speculative: SpecConfig | None = None  # prompt lookup or a draft model for the model's batcher (llama.cpp)
    draft_path: Path | None = None  # the draft model's GGUF, for method "draft"


def gpu_indices(devices: list[str]) -> list[int]:
    """The CUDA indices among a load's devices ("cuda:N"); empty on the CPU."""
    return [int(d.split(":")[1]) for d in devices if d.startswith("cuda:")]


class Backend(ABC):
    name: str = ""
    context_size: int = 0
    chat_template: str = ""
    bos_token: str = ""
    eos_token: str = ""
    is_tiny: bool = False  # test-only behaviour (scripted output) is allowed on tiny models alone

    @abstractmethod
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Tokenise, with control tokens parsed (`special`, for template markup) or kept as text.

        Called from the engine's tokenizer threads while the device thread decodes: it must
        only read the model's vocabulary."""

    batcher = None  # the model's BatchScheduler (neuron.engine.batching): every request runs through it
    slots = 0  # sequences the batcher decodes together

    @abstractmethod
    def detokenizer(self, skip_special: bool = True) -> Detokenizer:
        """A fresh incremental detokenizer for one generation; control tokens the model writes are left
        out of the text unless `skip_special` is false (vLLM's skip_special_tokens)."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens."""

    # Embeddings. Token ids a client may send are 0..vocab_size-1; vectors have embedding_dim values;
    # matryoshka_dims says what they may be cut to (None: nothing; empty: any size), from the model's config.
    vocab_size: int = 0
    embedding_dim: int = 0
    matryoshka_dims: tuple[int, ...] | None = None

    def embedding_ids(self, ids: list[int]) -> list[int]:
        """An input's content tokens framed as the model saw them in training (BOS; [CLS] ... [SEP])."""
        return ids

    @abstractmethod
    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """One pooled vector per input (framed ids, within the context), float32 rows; normalised
        as the model's own pipeline says (L2 for decoders)."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


def split_frame(plain: list[int], full: list[int]) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text (BOS; [CLS] and [SEP]), from one
    word encoded without them (`plain`) and with them (`full`)."""
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k], full[k + len(plain):]
    return [], []


def matryoshka_from_config(config: dict) -> tuple[int, ...] | None:
    """What a model's config.json says its vectors may be cut to, as vLLM reads it:
    `matryoshka_dimensions` (those sizes only) or `is_matryoshka: true` (any size)."""
    dims = config.get("matryoshka_dimensions")
    if isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return tuple(sorted(set(dims)))
    return () if config.get("is_matryoshka") is True else None


class GuidanceTokenizer:
    """Built on first use (it walks the whole vocabulary), once, whichever tokenizer thread asks first."""

    def __init__(self, build: Callable[[], object]):
        self._build = build
        self._value = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value
