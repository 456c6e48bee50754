"""Backends, imported lazily so the daemon starts (and the gateway imports) without them."""

from __future__ import annotations

from neuron.engine.backends.base import Backend, BackendSpec, BackendUnavailable
from neuron.errors import ApiError


def choose_backend(requested: str, model_format: str) -> str:
    """`auto` picks by format; an explicit choice must be able to read the format."""
    if requested == "auto":
        return "llama.cpp" if model_format == "gguf" else "torch"
    if requested == "llama.cpp" and model_format != "gguf":
        raise ApiError(400, "invalid_request_error",
                       "backend llama.cpp loads GGUF files only; use backend torch for a Hugging Face "
                       "directory, or convert it with llama.cpp's convert_hf_to_gguf.py",
                       code="backend_format_mismatch", param="backend")
    return requested


def backend_class(name: str) -> type[Backend]:
    """The backend's class, with its library imported (so a load's memory probe excludes it)."""
    if name == "llama.cpp":
        from neuron.engine.backends.llamacpp import LlamaCppBackend, _import_llama

        _import_llama()
        return LlamaCppBackend
    from neuron.engine.backends.torch_hf import TorchBackend, _import_torch

    _import_torch()
    return TorchBackend


__all__ = ["Backend", "BackendSpec", "BackendUnavailable", "backend_class", "choose_backend"]
