"""Relaying the neuron's OpenAI routes to a model's external engine, without buffering.

The request was already checked by the neuron's own parser (fields refused by
name), so the engine sees only what cortex honours; it gets the body with its
own model name, and its answer goes back as it comes: a JSON body whole, a
stream event by event (keep-alives while the engine prefills, as the in-process
backends send them). The gateway's dialects, tool calls, metrics and keys work
on top unchanged. The engine is always asked for a usage chunk, which becomes
the neuron's usage comment when the client did not ask for one. Errors the
engine answers with keep its words: a 4xx is the client's (a 400 for what the
engine does not support), a 5xx or a dropped connection is a 502.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from neuron.server.waiting_stream import WaitingStream
from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.sse import DONE, KEEPALIVE, USAGE_COMMENT, error_event, open_stream


def engine_body(body: dict, model_id: str) -> dict:
    if body.get("cortex_script") is not None:
        raise ApiError(400, "invalid_request_error", "cortex_script is a test feature of the in-process backends; "
                       "this model runs on an external engine", code="script_not_allowed", param="cortex_script")
    return {**body, "model": model_id}


async def relay_json(session: aiohttp.ClientSession, engine, path: str, body: dict) -> tuple[bytes, dict]:
    """(the engine's answer, its usage) for a non-streaming request."""
    async with _post(session, engine, path, body) as resp:
        raw = await _ok(resp, engine)
    try:
        usage = orjson.loads(raw).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        usage = {}
    return raw, usage


async def relay_stream(request: web.Request, session: aiohttp.ClientSession, engine, path: str, body: dict,
                       keepalive_s: float, waiting: WaitingStream) -> tuple[web.StreamResponse, dict, float | None]:
    """Stream the engine's answer to the client; (the response, the usage, seconds to the first output).

    Until the engine's headers come (llama-server sends them with its first token) the client's stream is
    opened only past a keep-alive interval, for keep-alives: the engine refuses a prompt too long before
    it prefills, so its refusal is in practice a status too."""
    asked = bool((body.get("stream_options") or {}).get("include_usage"))
    body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    started = time.perf_counter()
    posting = asyncio.ensure_future(_post(session, engine, path, body))
    try:
        while not (await asyncio.wait({posting}, timeout=keepalive_s))[0]:
            await waiting.keepalive()
        resp = posting.result()
    except (aiohttp.ClientError, OSError) as exc:
        raise ApiError(502, "api_error", f"{engine.name} failed before answering ({exc.__class__.__name__}); "
                       "retry the request", code="engine_failed") from exc
    finally:
        posting.cancel()  # a no-op once done; stops the engine's request if our client left meanwhile
    async with resp:
        if resp.status != 200:
            await _ok(resp, engine)
        out = waiting.resp or await open_stream(request)
        usage, first = await _pump(resp, out, asked, keepalive_s, started)
    return out, usage, first


async def _chunks(resp, out: web.StreamResponse, keepalive_s: float):
    """The engine's bytes as they come; keep-alives to the client until the first (the engine is prefilling).
    After that tokens flow, and chunks are read without a timer each (a task per chunk costs real CPU)."""
    events = resp.content.iter_any().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(events.__anext__(), keepalive_s)
        except TimeoutError:
            await out.write(KEEPALIVE)
            continue
        except StopAsyncIteration:
            return
        yield chunk
        break
    async for chunk in events:
        yield chunk


async def _pump(resp, out: web.StreamResponse, asked: bool, keepalive_s: float, started: float):
    usage, first, buffer = {}, None, b""
    try:
        async for chunk in _chunks(resp, out, keepalive_s):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n\n")
            for event in complete:
                found = _usage_of(event)
                if found is not None:
                    usage = found
                    if not asked:
                        await out.write(USAGE_COMMENT + orjson.dumps(found) + b"\n\n")
                        continue
                elif first is None and (b'"content":"' in event or b'"text":"' in event or b'"tool_calls"' in event):
                    first = time.perf_counter() - started
                if event.strip():
                    await out.write(event + b"\n\n")
    except (aiohttp.ClientError, OSError) as exc:
        err = ApiError(502, "api_error", f"the engine failed mid-stream ({exc.__class__.__name__}); the answer is "
                       "incomplete, retry the request", code="engine_failed")
        await out.write(error_event(err) + DONE)
    return usage, first


def _usage_of(event: bytes) -> dict | None:
    """The usage of a usage-only chunk (`choices: []`), else None."""
    if b'"usage"' not in event or not event.startswith(b"data: {"):
        return None
    try:
        data = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return None
    return data["usage"] if not data.get("choices") and isinstance(data.get("usage"), dict) else None


def _post(session: aiohttp.ClientSession, engine, path: str, body: dict):
    return session.post(engine.url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"})


async def _ok(resp: aiohttp.ClientResponse, engine) -> bytes:
    """The body of a 200; any other answer raised as the client's error (4xx) or the engine's (502)."""
    raw = await resp.read()
    if resp.status == 200:
        return raw
    err = error_from_envelope(resp.status, raw)
    if resp.status < 500:
        raise ApiError(resp.status, err.type or "invalid_request_error", f"{engine.name}: {err.message}",
                       code=err.code or "engine_refused", param=err.param)
    raise ApiError(502, "api_error", f"{engine.name} failed: {err.message[:300]}", code="engine_failed")


async def count_prompt(session: aiohttp.ClientSession, engine, body: dict) -> int:
    """The prompt's tokens, counted by the engine with the model's own template and tokenizer."""
    kind = engine.engine.tokenize
    if kind == "llama-server":
        template = {"messages": body.get("messages", []), **({"tools": body["tools"]} if body.get("tools") else {})}
        async with _post(session, engine, "/apply-template", template) as resp:
            prompt = orjson.loads(await _ok(resp, engine)).get("prompt", "")
        async with _post(session, engine, "/tokenize", {"content": prompt, "add_special": False,
                                                        "parse_special": True}) as resp:
            return len(orjson.loads(await _ok(resp, engine)).get("tokens", []))
    if kind == "vllm":
        ask = {"model": engine.model_id, "messages": body.get("messages", []), "add_generation_prompt": True,
               **({"tools": body["tools"]} if body.get("tools") else {})}
        async with _post(session, engine, "/tokenize", ask) as resp:
            return int(orjson.loads(await _ok(resp, engine)).get("count", 0))
    raise ApiError(400, "invalid_request_error", f"counting tokens is not available for models on {engine.name}",
                   code="unsupported_by_engine")
