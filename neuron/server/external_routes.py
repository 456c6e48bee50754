"""The neuron's inference routes for a model on an external engine: admitted, relayed, measured.

`openai_routes` and `embedding_routes` hand a request here when its model runs on
an engine the neuron started (llama-server, vLLM, SGLang): the same admission
slots (the engine's parallel slots), the same metrics and access-log fields,
and the relay in `neuron.engine.external.relay`.
"""

from __future__ import annotations

import time

from aiohttp import web

from neuron.engine.external.relay import count_prompt, engine_body, relay_json, relay_stream
from neuron.server.caller import caller_of
from neuron.server.state import ACCESS, ENGINE_SESSION, KEEPALIVE_S, METRICS
from neuron.server.waiting_stream import WaitingStream
from neuron.shared.errors import ApiError
from neuron.shared.http import json_response


async def relay(request: web.Request, entry, body: dict, path: str, endpoint: str) -> web.StreamResponse:
    app, engine = request.app, entry.backend
    caller = caller_of(request)  # whose turn it is in the model's queue
    payload = engine_body(body, engine.model_id)
    # The engine checks the prompt, and only once it has it: a stream that waits for a slot past a
    # keep-alive interval is opened for keep-alives, and an engine's refusal after that is an error event.
    waiting = WaitingStream(request) if payload.get("stream") else None
    queued_at = time.perf_counter()
    try:
        async with entry.admission.slot(waiting and waiting.keepalive, app[KEEPALIVE_S], caller):
            started = time.perf_counter()
            app[METRICS].queue_wait.labels(entry.id).observe(started - queued_at)
            if waiting is not None:
                resp, usage, ttft = await relay_stream(request, app[ENGINE_SESSION], engine, path, payload,
                                                       app[KEEPALIVE_S], waiting)
            else:
                raw, usage = await relay_json(app[ENGINE_SESSION], engine, path, payload)
                resp, ttft = web.Response(body=raw, content_type="application/json"), None
    except ApiError as err:
        if waiting is None:
            raise
        return await waiting.fail(err)
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    request[ACCESS] = {"model": entry.id, "prompt_tokens": prompt, "completion_tokens": completion,
                       "ttft_s": None if ttft is None else round(ttft, 4),
                       "priority": caller.priority_name, "tenant": caller.tenant or None}
    app[METRICS].observe_generation(entry.id, endpoint, prompt, completion, ttft, time.perf_counter() - started, 0)
    return resp


async def count(request: web.Request, entry, body: dict) -> web.Response:
    tokens = await count_prompt(request.app[ENGINE_SESSION], entry.backend, body)
    return json_response({"model": entry.id, "count": tokens})
