"""The gateway's OpenAI dialect: chat, completions, embeddings, rerank and image generation, passed through to
the neurons.

The neurons speak OpenAI, so the gateway reads only `model` and `stream` and
sends the body's bytes on untouched; answers and streams come back as they are.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from cortex_gateway.chat_images import checked_call
from cortex_gateway.dispatch import dispatch
from cortex_gateway.exchange import InferenceCall
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.proxy import JSON_HEADERS, relay_stream
from neuron.shared.errors import ApiError, bad_request
from neuron.shared.http import parse_json
from neuron.shared.multipart import parse_form
from neuron.shared.sse import DONE, KEEPALIVE, error_event


class OpenAIDialect:
    """Pass-through: bytes go back as they came."""

    keepalive = KEEPALIVE

    def error_event(self, err: ApiError) -> bytes:
        return error_event(err) + DONE

    def json_response(self, status: int, raw: bytes) -> web.Response:
        return web.Response(body=raw, status=status, headers=JSON_HEADERS)

    async def relay(self, upstream: aiohttp.ClientResponse, client_stream: web.StreamResponse,
                    rec: RequestRecord) -> None:
        await relay_stream(upstream, client_stream, rec)


OPENAI = OpenAIDialect()
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
TRANSCRIPTIONS = "/v1/audio/transcriptions"


def read_call(path: str, endpoint: str, body: bytes) -> InferenceCall:
    """The two fields the gateway reads, `model` and `stream`, checked; the rest is the neuron's to check."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise bad_request("request body: expected a JSON object", code="invalid_body")
    model, stream = data.get("model"), data.get("stream", False)
    if not isinstance(model, str) or not model:
        raise bad_request("model: required, a model id from GET /v1/models", param="model", code="missing_field")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream: expected true or false", param="stream")
    return InferenceCall(path, endpoint, model, body, bool(stream))


def read_upload(path: str, endpoint: str, body: bytes, content_type: str | None) -> InferenceCall:
    """A multipart upload's `model`, read in place; the body goes on as it came, with its Content-Type."""
    model = parse_form(body, content_type).text("model")
    if not model:
        raise bad_request("model: required, a model id from GET /v1/models", param="model", code="missing_field")
    return InferenceCall(path, endpoint, model, body, False, content_type=content_type or "")


async def transcriptions(request: web.Request) -> web.StreamResponse:
    call = read_upload(TRANSCRIPTIONS, "transcriptions", await request.read(), request.headers.get("Content-Type"))
    return await dispatch(request, call, OPENAI)


def inference_handler(path: str, endpoint: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        call = read_call(path, endpoint, await request.read())
        if path == "/v1/chat/completions":  # image parts: checked, fetched if allowed, refused for text models
            call = await checked_call(request, call)
        return await dispatch(request, call, OPENAI)

    return handler


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", inference_handler("/v1/chat/completions", "chat"))
    app.router.add_post("/v1/completions", inference_handler("/v1/completions", "completions"))
    app.router.add_post("/v1/embeddings", inference_handler("/v1/embeddings", "embeddings"))
    for path in RERANK_PATHS:  # llama-server's clients post to /rerank, Cohere's v2 SDK to /v2/rerank
        app.router.add_post(path, inference_handler("/v1/rerank", "rerank"))
    app.router.add_post("/v1/images/generations", inference_handler("/v1/images/generations", "images"))
    app.router.add_post(TRANSCRIPTIONS, transcriptions)  # multipart: its own reader
