"""`POST /v1/messages` and `/v1/messages/count_tokens`, served by translation to the neurons' OpenAI dialect."""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.anthropic.errors import error_event, render_anthropic
from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.anthropic.translate_response import to_anthropic
from cortex_gateway.anthropic.translate_stream import PING, SSEReader, StreamTranslator
from cortex_gateway.errors import RENDERERS
from cortex_gateway.proxy import Record, mid_stream_failure, upstream_api_error, write
from cortex_gateway.routes import LIFECYCLE, SESSION, serve_inference
from neuron.errors import ApiError, bad_request


class AnthropicDialect:
    keepalive = PING

    def __init__(self, model: str, stops: list[str]):
        self.model = model
        self.stops = stops

    def error_event(self, err: ApiError) -> bytes:
        return error_event(err)

    def json_response(self, status: int, raw: bytes) -> web.Response:
        if status != 200:
            return render_anthropic(upstream_api_error(status, raw))
        return web.Response(body=orjson.dumps(to_anthropic(orjson.loads(raw), self.model, self.stops)),
                            content_type="application/json")

    async def relay(self, upstream, client_stream: web.StreamResponse, rec: Record) -> None:
        translator = StreamTranslator(self.model, self.stops)
        reader = SSEReader()
        await write(client_stream, translator.start())
        try:
            async for chunk in upstream.content.iter_any():
                for data in reader.feed(chunk):
                    if data == b"[DONE]":
                        rec.finished_at = time.perf_counter()
                        u = translator.usage
                        rec.take_usage({"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"]})
                        await write(client_stream, translator.finish())
                        return
                    event = orjson.loads(data)
                    if "error" in event:  # the neuron failed mid-stream and said so
                        err = upstream_api_error(502, data)
                        rec.status, rec.error_type = 502, err.type
                        await write(client_stream, error_event(err))
                        return
                    if rec.first_token_at is None and _has_output(event):
                        rec.first_token_at = time.perf_counter()
                    await write(client_stream, translator.feed(event))
            raise aiohttp.ClientPayloadError("upstream stream ended without [DONE]")
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            await write(client_stream, error_event(mid_stream_failure(rec, exc)))
        finally:
            upstream.release()


def _has_output(event: dict) -> bool:
    return any((c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
               for c in event.get("choices") or [])


async def _read_body(request: web.Request):
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None


async def messages(request: web.Request) -> web.StreamResponse:
    body = to_openai(await _read_body(request))
    stream = bool(body.get("stream"))
    dialect = AnthropicDialect(body["model"], body.get("stop", []))
    return await serve_inference(request, "/v1/chat/completions", "messages", body, orjson.dumps(body),
                                 body["model"], stream, dialect)


async def count_tokens(request: web.Request) -> web.Response:
    data = await _read_body(request)
    if isinstance(data, dict):
        data = {**data, "max_tokens": 1}  # count_tokens takes no max_tokens; the translator wants one
    body = to_openai(data)
    lifecycle = request.app[LIFECYCLE]
    model = lifecycle.config.resolve_alias(body["model"])
    node, _ = await lifecycle.node_for(model)
    upstream_id = node.models.get(model, {}).get("id", model)
    payload = orjson.dumps({**body, "model": upstream_id, "stream": False})
    try:
        async with request.app[SESSION].post(node.endpoint + "/tokenize", data=payload,
                                             headers=node.client.json_headers) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise ApiError(502, "api_error", f"node {node.name} failed while counting tokens "
                       f"({exc.__class__.__name__}); retry", code="upstream_unavailable", retry_after=2) from exc
    if resp.status != 200:
        raise upstream_api_error(resp.status, raw)
    return web.json_response({"input_tokens": orjson.loads(raw)["count"]})


def add_routes(app: web.Application) -> None:
    RENDERERS["/v1/messages"] = render_anthropic
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
