"""The neuron's image generation route: `POST /v1/images/generations`, in OpenAI's request and answer.

Admitted like the other routes: a job takes one slot of the model's admission (an image model has one
per device, so jobs queue there in the fair queue and run one at a time); the pipeline runs on the
device thread (`neuron.engine.images`).
"""

from __future__ import annotations

import base64
import time
import uuid

from aiohttp import web

from neuron.engine import images
from neuron.server.caller import caller_of
from neuron.server.image_schema import parse_image_request
from neuron.server.state import ACCESS, ENGINE, METRICS, REGISTRY
from neuron.shared.errors import ApiError
from neuron.shared.http import json_response, read_json
from neuron.shared.request_context import REQUEST_ID

PATH = "/v1/images/generations"


async def generations(request: web.Request) -> web.Response:
    app = request.app
    req = parse_image_request(await read_json(request))
    caller = caller_of(request)  # whose turn it is in the model's queue
    entry = app[REGISTRY].require_loaded(req.model, PATH)
    if entry.on_engine:  # no external engine this neuron starts draws images
        raise ApiError(400, "invalid_request_error", f"model {req.model!r} runs on {entry.backend_name}, which "
                       "draws no images; load the diffusers folder with backend torch", param="model")
    job_id = request.get(REQUEST_ID) or uuid.uuid4().hex[:12]
    queued_at = time.perf_counter()
    async with entry.admission.slot(caller=caller):
        app[METRICS].queue_wait.labels(entry.id).observe(time.perf_counter() - queued_at)
        drawn = await images.generate(entry.backend, app[REGISTRY].worker_for(entry), app[ENGINE].tokenizer_pool,
                                      entry.id, req, job_id)
    app[METRICS].tokens.labels(entry.id, "prompt").inc(drawn.prompt_tokens)
    request[ACCESS] = {"model": entry.id, "prompt_tokens": drawn.prompt_tokens, "completion_tokens": 0,
                       "images": len(drawn.images), "priority": caller.priority_name, "tenant": caller.tenant or None}
    return json_response(answer(drawn, req.output_format))


def answer(drawn: images.Drawn, output_format: str) -> dict:
    """OpenAI's answer; `usage` in the Images API's own words (input_tokens) and in the ones the gateway
    meters by (prompt_tokens), with cortex's `images` and `seconds` for the gateway's image metrics."""
    data = []
    for image in drawn.images:
        item = {"b64_json": base64.b64encode(image).decode("ascii")}
        if drawn.revised_prompt is not None:
            item["revised_prompt"] = drawn.revised_prompt
        data.append(item)
    tokens = drawn.prompt_tokens
    usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens,
             "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
             "prompt_tokens": tokens, "completion_tokens": 0, "images": len(drawn.images),
             "seconds": round(drawn.seconds, 3)}
    return {"created": int(time.time()), "data": data, "output_format": output_format, "usage": usage}


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, generations)
