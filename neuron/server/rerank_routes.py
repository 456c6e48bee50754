"""The neuron's rerank route: `POST /v1/rerank` (and `/rerank`, `/v2/rerank`, where llama-server's and
Cohere's clients send it), in the shape llama-server, vLLM and Jina answer.

Admitted like embeddings: one slot of the model's admission per request, in its fair queue, the
pairs scored in chunks on the device thread. A model on an external engine gets the body relayed.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from neuron.engine import rerank
from neuron.server import external_routes
from neuron.server.caller import caller_of
from neuron.server.rerank_schema import RerankRequest, parse_rerank
from neuron.server.state import ACCESS, ENGINE, METRICS, REGISTRY
from neuron.shared.http import json_response, read_json

PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")


async def rerank_route(request: web.Request) -> web.Response:
    app = request.app
    body = await read_json(request)
    req = parse_rerank(body)
    caller = caller_of(request)  # whose turn it is in the model's queue
    entry = app[REGISTRY].require_loaded(req.model, "/v1/rerank")
    if entry.on_engine:
        return await external_routes.relay(request, entry, body, "/v1/rerank", "rerank")
    async with entry.admission.slot(caller=caller):
        scores, tokens = await rerank.score(entry.backend, app[REGISTRY].worker_for(entry),
                                            app[ENGINE].tokenizer_pool, entry.id, req)
    app[METRICS].tokens.labels(entry.id, "prompt").inc(tokens)
    request[ACCESS] = {"model": entry.id, "prompt_tokens": tokens, "completion_tokens": 0,
                       "priority": caller.priority_name, "tenant": caller.tenant or None}
    return json_response(answer(entry.id, req, scores, tokens))


def answer(model: str, req: RerankRequest, scores, tokens: int) -> dict:
    """Results by score descending, each naming its document's index (and text, unless asked not to)."""
    results = []
    for ranked in rerank.ranking(scores, req.top_n):
        result = {"index": ranked.index, "relevance_score": ranked.score}
        if req.return_documents:
            result["document"] = {"text": req.documents[ranked.index]}
        results.append(result)
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "object": "list", "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def add_routes(app: web.Application) -> None:
    for path in PATHS:
        app.router.add_post(path, rerank_route)
