"""Scoring one rerank request: bounds, tokens, pairs, context, chunks on the device thread, the ranking.

As for embeddings (`neuron.engine.embeddings`): text is tokenised on the engine's tokenizer threads
(the query once, each document once), never on the device thread or the event loop; client text is
never parsed as control tokens; and a (query, document) pair the model cannot read whole is refused,
naming the document, never cut.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from neuron.engine.embeddings import CHUNK
from neuron.engine.prompt import check_chars, context_exceeded
from neuron.engine.worker import DeviceWorker
from neuron.server.rerank_schema import RerankRequest
from neuron.shared.errors import bad_request

Pair = tuple[list[int], list[int]]  # input ids, token type ids


@dataclass(frozen=True)
class Ranked:
    """One result: the document's index in the request and its relevance score."""

    index: int
    score: float


async def score(backend, worker: DeviceWorker, pool: Executor, model: str,
                req: RerankRequest) -> tuple[np.ndarray, int]:
    """Every document's score (float32, in the request's order) and the tokens the model read."""
    check_chars(len(req.query), backend.context_size, model, "query")  # before tokenising: a megabyte string
    for i, doc in enumerate(req.documents):                              # must not reach the tokenizer
        check_chars(len(doc), backend.context_size, model, f"documents[{i}]")
    pairs = await asyncio.get_running_loop().run_in_executor(pool, framed_pairs, backend, req, model)
    parts = []
    for start in range(0, len(pairs), CHUNK):  # between two jobs the device thread serves other models
        chunk = pairs[start:start + CHUNK]
        parts.append(await worker.call(lambda chunk=chunk: backend.score(chunk)))
    return np.concatenate(parts), sum(len(ids) for ids, _ in pairs)


def framed_pairs(backend, req: RerankRequest, model: str) -> list[Pair]:
    """Each (query, document) pair as the model reads it, each checked to fit its context."""
    query = backend.tokenize(req.query, special=False)
    if not query:
        raise bad_request(f"query: gives no tokens for model {model!r}; send some text", param="query")
    out = []
    for i, doc in enumerate(req.documents):
        pair = backend.pair_ids(query, backend.tokenize(doc, special=False) if doc else [])
        if len(pair[0]) > backend.context_size:
            raise context_exceeded(len(pair[0]), backend.context_size, "documents",
                                   f"the query and documents[{i}] together; shorten or split that document")
        out.append(pair)
    return out


def ranking(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """The best `top_n` (all when None), by score descending; equal scores keep the documents' order."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return [Ranked(i, float(scores[i])) for i in order[:top_n]]
