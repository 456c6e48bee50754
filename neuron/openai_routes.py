"""The neuron's OpenAI-dialect inference routes: chat, completions, embeddings."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from neuron.errors import ApiError, bad_request, json_response
from neuron.inference import Generation, InferenceEngine
from neuron.metrics import NeuronMetrics
from neuron.openai_schema import InferenceRequest, parse_chat, parse_completion, parse_embedding_input
from neuron.registry import Registry
from neuron.sse import DONE, KEEPALIVE, ChunkFramer, error_event, open_stream, usage_dict

ENGINE = web.AppKey("engine", InferenceEngine)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", NeuronMetrics)
KEEPALIVE_S = web.AppKey("keepalive_s", float)


async def read_json(request: web.Request):
    body = await request.read()
    if not body:
        raise bad_request("request body: expected JSON, got an empty body", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, parse_chat(await read_json(request)), chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, parse_completion(await read_json(request)), chat=False)


async def _complete(request: web.Request, req: InferenceRequest, chat: bool) -> web.StreamResponse:
    app = request.app
    entry = app[REGISTRY].ready(req.model)
    endpoint = "chat" if chat else "completions"
    async with entry.admission.slot():
        gen = await app[ENGINE].start(entry, req)
        if req.stream:
            resp = await _stream(request, gen, ChunkFramer(entry.id, chat))
        else:
            resp = json_response(await _collect(gen, ChunkFramer(entry.id, chat)))
    s = gen.stats
    app[METRICS].observe_generation(entry.id, endpoint, s.prompt_tokens, s.completion_tokens, gen.ttft_s,
                                    time.perf_counter() - gen.started)
    return resp


async def _collect(gen: Generation, framer: ChunkFramer) -> dict:
    parts = []
    async for batch in gen.batches():
        parts.extend(d.text for d in batch)
    text = "".join(parts)
    s = gen.stats
    if framer.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": gen.finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": gen.finish_reason, "logprobs": None}
    return {"id": framer.id, "object": "chat.completion" if framer.chat else "text_completion",
            "created": framer.created, "model": framer.model, "choices": [choice],
            "usage": usage_dict(s.prompt_tokens, s.completion_tokens)}


async def _stream(request: web.Request, gen: Generation, framer: ChunkFramer) -> web.StreamResponse:
    resp = await open_stream(request)
    try:
        await resp.write(framer.role())
        async for batch in gen.batches(request.app[KEEPALIVE_S]):
            if batch is None:
                await resp.write(KEEPALIVE)
                continue
            await resp.write(b"".join(framer.text(d.text) for d in batch if d.text))
        s = gen.stats
        await resp.write(framer.finish(gen.finish_reason or "stop")
                         + framer.usage(s.prompt_tokens, s.completion_tokens) + DONE)
    except ApiError as err:
        # Headers are gone: the client learns of the failure from an error event.
        await resp.write(error_event(err) + DONE)
    except (ConnectionResetError, ConnectionError):
        pass  # the client left; `batches` has already told the decode loop to stop
    return resp


async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    model, texts = parse_embedding_input(await read_json(request))
    entry = app[REGISTRY].ready(model)
    async with entry.admission.slot():
        vectors, tokens = await app[ENGINE].embed(entry, texts)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    app[METRICS].tokens.labels(entry.id, "prompt").inc(tokens)
    return json_response({"object": "list", "data": data, "model": entry.id,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
