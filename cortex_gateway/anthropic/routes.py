"""`POST /v1/messages` and `/v1/messages/count_tokens`, served by translation to the neurons' OpenAI dialect."""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.anthropic.errors import error_event, render_anthropic
from cortex_gateway.anthropic.fields import COUNT_TOKENS
from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.anthropic.translate_response import to_anthropic
from cortex_gateway.anthropic.translate_stream import StreamTranslator
from cortex_gateway.dispatch import InferenceCall, dispatch
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.proxy import mid_stream_failure, write
from cortex_gateway.sse_reader import SSEReader, is_keepalive
from cortex_gateway.state import LIFECYCLE, SESSION
from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.http import parse_json
from neuron.shared.request_context import with_request_id
from neuron.shared.sse import PROMPT_TOKENS_HEADER


class AnthropicDialect:
    def __init__(self, model: str, stops: list[str], progress_after: float):
        self.model = model
        self.stops = stops
        self.progress_after = progress_after
        # Made with the request, not with the neuron's answer: a cold load's keep-alives come before it.
        self.translator = StreamTranslator(model, stops)

    @property
    def keepalive(self) -> bytes:
        """Read by dispatch at each keep-alive of a cold load: a ping, or progress once the wait is long."""
        return self.translator.keepalive(self.progress_after)

    def error_event(self, err: ApiError) -> bytes:
        return error_event(err)

    def json_response(self, status: int, raw: bytes) -> web.Response:
        if status != 200:
            return render_anthropic(error_from_envelope(status, raw))
        return web.Response(body=orjson.dumps(to_anthropic(orjson.loads(raw), self.model, self.stops)),
                            content_type="application/json")

    async def relay(self, upstream, client_stream: web.StreamResponse, rec: RequestRecord) -> None:
        translator = self.translator
        reader = SSEReader()
        if not translator.started:  # a long cold load may have sent it, without the prompt's size
            await write(client_stream, translator.start(_prompt_tokens(upstream)))
        try:
            async for chunk in upstream.content.iter_any():
                for data in reader.feed(chunk):
                    if data.startswith(b":"):  # a comment: a keep-alive becomes a ping (or progress); usage
                        if is_keepalive(data):  # comes as a chunk
                            await write(client_stream, translator.keepalive(self.progress_after))
                        continue
                    if data == b"[DONE]":
                        rec.finished_at = time.perf_counter()
                        u = translator.usage
                        rec.take_usage({"prompt_tokens": u["input_tokens"] + u.get("cache_read_input_tokens", 0),
                                        "completion_tokens": u["output_tokens"]})
                        await write(client_stream, translator.finish())
                        return
                    event = orjson.loads(data)
                    if "error" in event:  # the neuron failed mid-stream and said so
                        err = error_from_envelope(502, data)
                        rec.failed(502, err.type)
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


def _prompt_tokens(upstream) -> int:
    """The prompt's size as the neuron counted it, sent before the answer, for message_start."""
    try:
        return int(upstream.headers.get(PROMPT_TOKENS_HEADER, 0))
    except ValueError:
        return 0


def _has_output(event: dict) -> bool:
    return any((c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
               for c in event.get("choices") or [])


async def _read_body(request: web.Request):
    raw = await request.read()
    return parse_json(raw) if raw else None  # an empty body gets to_openai's error, which names the fields


async def messages(request: web.Request) -> web.StreamResponse:
    progress_after = request.app[LIFECYCLE].config.progress_interval_s
    call, dialect = _translated_call(await _read_body(request), progress_after)
    return await dispatch(request, call, dialect)


def _translated_call(data, progress_after: float) -> tuple[InferenceCall, AnthropicDialect]:
    """Translate, keeping only the bytes: neither parsed form lives on while the answer streams."""
    body = to_openai(data)
    dialect = AnthropicDialect(body["model"], body.get("stop", []), progress_after)
    return InferenceCall("/v1/chat/completions", "messages", body["model"], orjson.dumps(body),
                         bool(body.get("stream"))), dialect


async def count_tokens(request: web.Request) -> web.Response:
    data = await _read_body(request)
    if isinstance(data, dict):
        data = {**data, "max_tokens": 1}  # count_tokens takes no max_tokens; the translator wants one
    body = to_openai(data, COUNT_TOKENS)
    lifecycle = request.app[LIFECYCLE]
    model = lifecycle.config.resolve_alias(body["model"])
    node = await lifecycle.node_for(model)
    payload = orjson.dumps({**body, "model": node.upstream_id(model), "stream": False})
    try:
        async with request.app[SESSION].post(node.endpoint + "/tokenize", data=payload,
                                             headers=with_request_id(node.client.json_headers)) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise ApiError(502, "api_error", f"node {node.name} failed while counting tokens "
                       f"({exc.__class__.__name__}); retry", code="upstream_unavailable", retry_after=2) from exc
    if resp.status != 200:
        raise error_from_envelope(resp.status, raw)
    return web.json_response({"input_tokens": orjson.loads(raw)["count"]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
