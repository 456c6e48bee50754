"""Backends, imported lazily so the daemon starts (and the gateway imports) without them."""

from __future__ import annotations

from neuron.engine.backends.base import Backend, BackendSpec, BackendUnavailable
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelKind


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


def backend_class(name: str, kind: ModelKind = ModelKind.GENERATION) -> type[Backend]:
    """The backend's class, with its library imported (so a load's memory probe excludes it).

    An embedding model opens with the backend's embedding class: on torch an encoder (`AutoModel`,
    pooled per its sentence-transformers config), on llama.cpp an embedding context alone. A rerank
    model opens as a cross-encoder: `AutoModelForSequenceClassification` on torch, a rank-pooling
    context on llama.cpp. A vision model opens with its processor on torch, with its projector (mmproj)
    through llama.cpp's mtmd on llama.cpp. An image model opens as a diffusers pipeline, on torch only."""
    if name == "llama.cpp":
        from neuron.engine.backends.llamacpp import LlamaCppBackend, _import_llama
        from neuron.engine.backends.llamacpp_embed import LlamaEmbeddingBackend

        _import_llama()
        if kind == ModelKind.VISION:  # a chat GGUF with its multimodal projector (mmproj), through mtmd
            from neuron.engine.backends.llamacpp_vision import LlamaVisionBackend

            return LlamaVisionBackend
        if kind == ModelKind.RERANK:
            from neuron.engine.backends.llamacpp_rerank import LlamaRerankBackend

            return LlamaRerankBackend
        return LlamaEmbeddingBackend if kind == ModelKind.EMBEDDING else LlamaCppBackend
    from neuron.engine.backends.torch_hf import TorchBackend, _import_torch

    _import_torch()
    if kind == ModelKind.EMBEDDING:
        from neuron.engine.backends.torch_encoder import TorchEncoderBackend

        return TorchEncoderBackend
    if kind == ModelKind.RERANK:
        from neuron.engine.backends.torch_rerank import TorchRerankBackend

        return TorchRerankBackend
    if kind == ModelKind.VISION:  # image-text-to-text, with its processor
        from neuron.engine.backends.torch_vision import TorchVisionBackend

        return TorchVisionBackend
    if kind == ModelKind.TRANSCRIPTION:  # Whisper and its processor
        from neuron.engine.backends.torch_whisper import TorchWhisperBackend

        return TorchWhisperBackend
    if kind == ModelKind.IMAGE:  # a diffusers pipeline folder
        from neuron.engine.backends.diffusers_image import DiffusersImageBackend, _import_diffusers

        _import_diffusers()
        return DiffusersImageBackend
    return TorchBackend


__all__ = ["Backend", "BackendSpec", "BackendUnavailable", "backend_class", "choose_backend"]
