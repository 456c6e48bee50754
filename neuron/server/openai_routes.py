"""The neuron's OpenAI-dialect inference routes: chat and completions (embeddings: `embedding_routes`)."""

from __future__ import annotations

import time

from aiohttp import web

from neuron.engine.queue_order import Caller
from neuron.engine.tool_calls import ToolCallParser
from neuron.server import external_routes
from neuron.server.answers import Choice, collect_choices, stream_choices, usage_of
from neuron.server.caller import caller_of
from neuron.server.openai_schema import InferenceRequest, parse_chat, parse_completion
from neuron.server.state import ACCESS, ENGINE, KEEPALIVE_S, METRICS, REGISTRY
from neuron.server.waiting_stream import WaitingStream
from neuron.shared.errors import ApiError
from neuron.shared.http import json_response, read_json
from neuron.shared.image_parts import text_only
from neuron.shared.protocol import ModelKind
from neuron.shared.sse import PROMPT_TOKENS_HEADER, ChunkFramer


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _complete(request, parse_chat(body), body, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    return await _complete(request, parse_completion(body), body, chat=False)


async def _complete(request: web.Request, req: InferenceRequest, body: dict, chat: bool) -> web.StreamResponse:
    app = request.app
    caller = caller_of(request)  # whose turn it is in the model's queue
    entry = _loaded(app, req)
    if entry.on_engine:  # checked by our parser above; the engine does the rest
        return await external_routes.relay(request, entry, body, request.path, "chat" if chat else "completions")
    prepared = await app[ENGINE].prepare(entry, req)  # refused here, before it queues: a real HTTP status
    # Checked, it may wait for a slot: past a keep-alive interval its stream opens (the gateway, which
    # commits nothing before our headers, relays the keep-alives), with the prompt's size known.
    waiting = WaitingStream(request, {PROMPT_TOKENS_HEADER: str(prepared.prompt_tokens)}) if req.stream else None
    try:
        gens, resp = await _run(request, entry, req, prepared, waiting, chat, caller)
    except ApiError as err:  # the queue's timeout, or a start that failed, after keep-alives: an error event
        if waiting is None:
            raise
        return await waiting.fail(err)
    prompt, completion, cached = usage_of(gens)
    request[ACCESS] = {"model": entry.id, "prompt_tokens": prompt, "completion_tokens": completion,
                       "ttft_s": None if gens[0].ttft_s is None else round(gens[0].ttft_s, 4),
                       "priority": caller.priority_name, "tenant": caller.tenant or None}
    app[METRICS].observe_generation(entry.id, "chat" if chat else "completions", prompt, completion, gens[0].ttft_s,
                                    time.perf_counter() - gens[0].started, cached)
    return resp


async def _run(request: web.Request, entry, req: InferenceRequest, prepared, waiting: WaitingStream | None,
               chat: bool, caller: Caller) -> tuple[list, web.StreamResponse]:
    """Admitted (waiting for a slot if need be), run the request and answer it: (its generations, the answer)."""
    app = request.app
    queued_at = time.perf_counter()
    async with entry.admission.slot(waiting and waiting.keepalive, app[KEEPALIVE_S], caller):
        app[METRICS].queue_wait.labels(entry.id).observe(time.perf_counter() - queued_at)
        gens = await app[ENGINE].start(entry, req, prepared)
        choices = [Choice(g, f, _tool_parser(req) if chat else None)
                   for g, f in zip(gens, ChunkFramer.for_choices(entry.id, chat, len(gens)), strict=True)]
        if waiting is not None:
            return gens, await stream_choices(request, choices, app[KEEPALIVE_S], req.include_usage, waiting.resp)
        return gens, json_response(await collect_choices(choices))


def _loaded(app: web.Application, req: InferenceRequest):
    """The request's model, loaded and of a kind that serves it: images need a vision model."""
    entry = app[REGISTRY].require_loaded(req.model)
    if req.images and entry.ref.kind not in (ModelKind.VISION, None):
        raise text_only(entry.id, req.images[0].where)
    return entry


def _tool_parser(req: InferenceRequest) -> ToolCallParser | None:
    if not req.tools or req.tool_choice.mode == "none":
        return None
    return ToolCallParser({t["function"]["name"] for t in req.tools}, max_calls=None if req.parallel_tool_calls else 1)


async def tokenize(request: web.Request) -> web.Response:
    """Count a chat request's prompt tokens with the model's own template and tokenizer."""
    app = request.app
    body = await read_json(request)
    req = parse_chat(body)
    entry = _loaded(app, req)
    if entry.on_engine:
        return await external_routes.count(request, entry, body)
    tokens = await app[ENGINE].prompt_tokens(entry, req)
    return json_response({"model": entry.id, "count": len(tokens)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
