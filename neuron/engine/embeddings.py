"""Making the vectors of one embeddings request: bounds, tokens, vocabulary, context, chunks, dimensions.

Text is tokenised on the engine's tokenizer threads (never on the device thread, which other
models share, nor on the event loop); token arrays are checked against the model's vocabulary.
Each input is framed as the model was trained (BOS, or [CLS] ... [SEP]) before its length is
checked against the context, so an input the model cannot see whole is refused, never cut.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from neuron.engine.backends.base import Backend
from neuron.engine.prompt import check_chars, context_exceeded
from neuron.engine.worker import DeviceWorker
from neuron.server.embedding_schema import EmbeddingRequest, check_dimensions
from neuron.shared.errors import bad_request

# Inputs per job on the device thread: between two jobs the thread serves other models' steps.
CHUNK = 64


async def embed(backend: Backend, worker: DeviceWorker, pool: Executor, model: str,
                req: EmbeddingRequest) -> tuple[np.ndarray, int]:
    """The request's vectors (float32 rows, in input order) and the tokens the model read."""
    dims = check_dimensions(req.dimensions, backend.embedding_dim, backend.matryoshka_dims, model)
    for item, name in zip(req.inputs, req.names, strict=True):
        if isinstance(item, str):  # bounded before tokenising: a megabyte string must not reach the tokenizer
            check_chars(len(item), backend.context_size, model, name)
    framed = await asyncio.get_running_loop().run_in_executor(pool, framed_inputs, backend, req, model)
    parts = []
    for start in range(0, len(framed), CHUNK):
        chunk = framed[start:start + CHUNK]
        parts.append(await worker.call(lambda chunk=chunk: backend.embed(chunk)))
    vectors = np.concatenate(parts)
    return (truncated(vectors, dims) if dims < vectors.shape[1] else vectors), sum(map(len, framed))


def framed_inputs(backend: Backend, req: EmbeddingRequest, model: str) -> list[list[int]]:
    """Every input as the ids the model will read, each checked to fit its context."""
    out = []
    for item, name in zip(req.inputs, req.names, strict=True):
        if isinstance(item, str):
            ids = backend.tokenize(item, special=False)  # client text is never parsed as control tokens
        else:
            ids = checked_ids(item, backend.vocab_size, model, name)
        framed = backend.embedding_ids(ids)
        if not framed:
            raise bad_request(f"{name}: gives no tokens for model {model!r}; send some text", param="input")
        if len(framed) > backend.context_size:
            raise context_exceeded(len(framed), backend.context_size, "input", name)
        out.append(framed)
    return out


def checked_ids(ids: list[int], vocab_size: int, model: str, name: str) -> list[int]:
    """Token ids are the model's own: each must be in its vocabulary."""
    if min(ids) >= 0 and max(ids) < vocab_size:
        return ids
    j = next(j for j, t in enumerate(ids) if not 0 <= t < vocab_size)
    raise bad_request(f"{name}[{j}]: token id {ids[j]} is not in the vocabulary of model {model!r} (ids 0 to "
                      f"{vocab_size - 1}); token arrays must hold this model's own token ids, not tiktoken's",
                      param="input", code="invalid_token_id")


def truncated(vectors: np.ndarray, dims: int) -> np.ndarray:
    """Matryoshka: the first `dims` values of each vector, L2-normalised again."""
    cut = vectors[:, :dims]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
