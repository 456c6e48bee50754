"""What every backend provides. Methods are called on the device's worker thread only."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from neuron.engine.generation import Detokenizer


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
    def detokenizer(self) -> Detokenizer:
        """A fresh incremental detokenizer for one generation."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens."""

    @abstractmethod
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One pooled, L2-normalised vector per text."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


def forced_sequence_check(forced: list[int] | None, step: int) -> int | None:
    """The token forced at `step`, if any (shared by the backends' samplers)."""
    if forced is None or step >= len(forced):
        return None
    return forced[step]
