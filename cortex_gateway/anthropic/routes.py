"""`POST /v1/messages` and `/v1/messages/count_tokens`, served by translation to the neurons' OpenAI dialect.

Both go through `dispatch`: a message to the neuron's chat completions, a token
count to its `/tokenize`, so a count is placed, retried and recorded as a
message is, and its errors are the same.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from cortex_gateway.anthropic.errors import render_anthropic
from cortex_gateway.anthropic.fields import COUNT_TOKENS
from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.anthropic.translate_response import to_anthropic
from cortex_gateway.anthropic.translate_stream import StreamTranslator
from cortex_gateway.chat_images import check_images
from cortex_gateway.dispatch import dispatch
from cortex_gateway.exchange import InferenceCall, TranslatingDialect
from cortex_gateway.state import LIFECYCLE
from neuron.shared.errors import error_from_envelope
from neuron.shared.http import parse_json


class AnthropicDialect(TranslatingDialect):
    """One request's Anthropic answer: whole, or streamed through its `StreamTranslator`."""

    def __init__(self, model: str, stops: list[str], progress_after: float):
        self.model = model
        self.stops = stops
        self.progress_after = progress_after
        self.translator = StreamTranslator(model, stops)

    def json_response(self, status: int, raw: bytes) -> web.Response:
        if status != 200:
            return render_anthropic(error_from_envelope(status, raw))
        return web.Response(body=orjson.dumps(to_anthropic(orjson.loads(raw), self.model, self.stops)),
                            content_type="application/json")


class TokenCountDialect(AnthropicDialect):
    """count_tokens: the neuron's `/tokenize` answer, `{"count": n}`, as Anthropic's `{"input_tokens": n}`."""

    def json_response(self, status: int, raw: bytes) -> web.Response:
        if status != 200:
            return super().json_response(status, raw)
        return web.json_response({"input_tokens": orjson.loads(raw)["count"]})


async def _read_body(request: web.Request):
    raw = await request.read()
    return parse_json(raw) if raw else None  # an empty body gets to_openai's error, which names the fields


async def messages(request: web.Request) -> web.StreamResponse:
    progress_after = request.app[LIFECYCLE].config.progress_interval_s
    body = to_openai(await _read_body(request))
    await check_images(request.app, body)  # refused for a text-only model, bounded, fetched where allowed
    call, dialect = _translated_call(body, progress_after)
    return await dispatch(request, call, dialect)


def _translated_call(body: dict, progress_after: float) -> tuple[InferenceCall, AnthropicDialect]:
    """Keep only the bytes of the translation: the parsed form does not live on while the answer streams."""
    dialect = AnthropicDialect(body["model"], body.get("stop", []), progress_after)
    return InferenceCall("/v1/chat/completions", "messages", body["model"], orjson.dumps(body),
                         bool(body.get("stream"))), dialect


async def count_tokens(request: web.Request) -> web.StreamResponse:
    data = await _read_body(request)
    if isinstance(data, dict):
        data = {**data, "max_tokens": 1}  # count_tokens takes no max_tokens; the translator wants one
    body = {**to_openai(data, COUNT_TOKENS), "stream": False}
    await check_images(request.app, body)  # a vision model's /tokenize counts each image's tokens
    call = InferenceCall("/tokenize", "count_tokens", body["model"], orjson.dumps(body), False)
    progress_after = request.app[LIFECYCLE].config.progress_interval_s
    return await dispatch(request, call, TokenCountDialect(body["model"], [], progress_after))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
