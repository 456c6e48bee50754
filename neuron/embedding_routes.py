"""The neuron's OpenAI-dialect embeddings route."""

from __future__ import annotations

from aiohttp import web

from neuron.embedding_schema import parse_embedding_input
from neuron.http import json_response, read_json
from neuron.state import ENGINE, METRICS, REGISTRY


async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    model, texts = parse_embedding_input(await read_json(request))
    entry = app[REGISTRY].require_loaded(model)
    async with entry.admission.slot():
        vectors, tokens = await app[ENGINE].embed(entry, texts)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    app[METRICS].tokens.labels(entry.id, "prompt").inc(tokens)
    return json_response({"object": "list", "data": data, "model": entry.id,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
