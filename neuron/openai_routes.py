"""The neuron's OpenAI-dialect inference routes: chat, completions, embeddings."""

from __future__ import annotations

import time

from aiohttp import web

from neuron.engine.inference import Generation
from neuron.engine.tool_calls import ToolCallParser, parse_all
from neuron.errors import ApiError
from neuron.http import json_response, read_json
from neuron.openai_schema import InferenceRequest, parse_chat, parse_completion, parse_embedding_input
from neuron.sse import DONE, KEEPALIVE, ChunkFramer, error_event, open_stream, usage_dict
from neuron.state import ENGINE, KEEPALIVE_S, METRICS, REGISTRY


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, parse_chat(await read_json(request)), chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, parse_completion(await read_json(request)), chat=False)


async def _complete(request: web.Request, req: InferenceRequest, chat: bool) -> web.StreamResponse:
    app = request.app
    entry = app[REGISTRY].require_loaded(req.model)
    endpoint = "chat" if chat else "completions"
    queued_at = time.perf_counter()
    async with entry.admission.slot():
        app[METRICS].queue_wait.labels(entry.id).observe(time.perf_counter() - queued_at)
        gen = await app[ENGINE].start(entry, req)
        parser = _tool_parser(req) if chat else None
        if req.stream:
            resp = await _stream(request, gen, ChunkFramer(entry.id, chat), parser)
        else:
            resp = json_response(await _collect(gen, ChunkFramer(entry.id, chat), parser))
    s = gen.stats
    app[METRICS].observe_generation(entry.id, endpoint, s.prompt_tokens, s.completion_tokens, gen.ttft_s,
                                    time.perf_counter() - gen.started, s.cached_tokens)
    return resp


def _tool_parser(req: InferenceRequest) -> ToolCallParser | None:
    if not req.tools or req.tool_choice == "none":
        return None
    return ToolCallParser({t["function"]["name"] for t in req.tools})


def _finish_reason(gen: Generation, parser: ToolCallParser | None) -> str:
    if parser is not None and parser.calls and gen.finish_reason == "stop":
        return "tool_calls"
    return gen.finish_reason or "stop"


async def _collect(gen: Generation, framer: ChunkFramer, parser: ToolCallParser | None) -> dict:
    parts = []
    async for batch in gen.batches():
        parts.extend(d.text for d in batch)
    text = "".join(parts)
    s = gen.stats
    if framer.chat:
        message = {"role": "assistant", "content": text}
        if parser is not None:
            content, calls = parse_all(text, parser.tool_names)
            parser.calls = calls
            message["content"] = content or (None if calls else "")
            if calls:
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        choice = {"index": 0, "message": message, "finish_reason": _finish_reason(gen, parser),
                  "stop_reason": gen.stop_sequence, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": gen.finish_reason, "stop_reason": gen.stop_sequence,
                  "logprobs": None}
    return {"id": framer.id, "object": "chat.completion" if framer.chat else "text_completion",
            "created": framer.created, "model": framer.model, "choices": [choice],
            "usage": usage_dict(s.prompt_tokens, s.completion_tokens, s.cached_tokens)}


async def _stream(request: web.Request, gen: Generation, framer: ChunkFramer,
                  parser: ToolCallParser | None) -> web.StreamResponse:
    resp = await open_stream(request)
    try:
        await resp.write(framer.role())
        async for batch in gen.batches(request.app[KEEPALIVE_S]):
            if batch is None:
                await resp.write(KEEPALIVE)
                continue
            text = "".join(d.text for d in batch)
            await resp.write(_frame(framer, parser, *(parser.feed(text) if parser else (text, []))))
        if parser is not None:
            await resp.write(_frame(framer, parser, *parser.finish()))
        s = gen.stats
        await resp.write(framer.finish(_finish_reason(gen, parser), gen.stop_sequence)
                         + framer.usage(s.prompt_tokens, s.completion_tokens, s.cached_tokens) + DONE)
    except ApiError as err:
        # Headers are gone: the client learns of the failure from an error event.
        await resp.write(error_event(err) + DONE)
    except (ConnectionResetError, ConnectionError):
        pass  # the client left; `batches` has already told the decode loop to stop
    return resp


def _frame(framer: ChunkFramer, parser: ToolCallParser | None, text: str, calls: list) -> bytes:
    out = framer.text(text) if text else b""
    if calls:
        first = len(parser.calls) - len(calls)
        out += b"".join(framer.tool_call(first + i, c) for i, c in enumerate(calls))
    return out


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


async def tokenize(request: web.Request) -> web.Response:
    """Count a chat request's prompt tokens with the model's own template and tokenizer."""
    app = request.app
    req = parse_chat(await read_json(request))
    entry = app[REGISTRY].require_loaded(req.model)
    tokens = await app[ENGINE].prompt_tokens(entry, req)
    return json_response({"model": entry.id, "count": len(tokens)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
