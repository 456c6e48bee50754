"""The neuron's OpenAI-dialect embeddings route: `POST /v1/embeddings`."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from aiohttp import web

from neuron.server import external_routes
from neuron.server.caller import caller_of
from neuron.server.embedding_schema import parse_embeddings
from neuron.server.state import ENGINE, METRICS, REGISTRY
from neuron.shared.http import read_json


async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    body = await read_json(request)
    req = parse_embeddings(body)
    caller = caller_of(request)  # whose turn it is in the model's queue
    entry = app[REGISTRY].require_loaded(req.model, "/v1/embeddings")
    if entry.on_engine:
        return await external_routes.relay(request, entry, body, "/v1/embeddings", "embeddings")
    async with entry.admission.slot(caller=caller):
        vectors, tokens = await app[ENGINE].embed(entry, req)
    app[METRICS].tokens.labels(entry.id, "prompt").inc(tokens)
    data = [{"object": "embedding", "index": i, "embedding": encoded(v, req.encoding_format)}
            for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": entry.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    # orjson writes float32 rows in their shortest form (0.1, not 0.10000000149011612).
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")


def encoded(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """"base64" is the vector's little-endian float32 bytes, as OpenAI sends them (and its SDK,
    which asks for base64 by default, decodes them)."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vector, dtype=np.float32)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
