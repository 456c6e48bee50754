"""A fake-fast neuron for measuring the gateway's own overhead (never for proving features).

It speaks just enough of the node API (health, models, chat completions, streaming
or not) and answers instantly, so whatever time a request takes through the
gateway beyond this is the gateway's.

    python benchmarks/fake_neuron.py PORT [CHUNKS]
"""

from __future__ import annotations

import sys

import orjson
from aiohttp import web

MODEL = "fake"
COMPLETION = orjson.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the fake neuron"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}})


def stream_body(chunks: int) -> bytes:
    head = b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":"fake","choices":'
    parts = [head + b'[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n' for _ in range(chunks)]
    parts.append(head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    parts.append(head + b'[],"usage":{"prompt_tokens":8,"completion_tokens":%d,"total_tokens":%d}}\n\n'
                 % (chunks, chunks + 8))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def create_app(chunks: int = 16) -> web.Application:
    streamed = stream_body(chunks)

    async def health(_):
        return web.json_response({"status": "ok", "name": "fake", "uptime_s": 1, "devices": [
            {"id": "cpu", "kind": "cpu", "total_mb": 1000, "free_mb": 1000, "used_mb": 0}],
            "models": [{"id": MODEL, "status": "loaded", "in_flight": 0, "queue_depth": 0}]})

    async def models(_):
        return web.json_response({"models": [{"id": MODEL, "status": "loaded", "memory_mb": 1, "devices": ["cpu"],
                                              "backend": "fake", "context_size": 2048}]})

    async def available(_):
        return web.json_response({"models": [{"id": MODEL, "format": "gguf", "path": "/fake", "size_mb": 1}]})

    async def chat(request: web.Request):
        body = orjson.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=COMPLETION, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(streamed)
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/models", models)
    app.router.add_get("/models/available", available)
    app.router.add_post("/v1/chat/completions", chat)
    return app


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    web.run_app(create_app(int(sys.argv[2]) if len(sys.argv) > 2 else 16), host="127.0.0.1",
                port=int(sys.argv[1]), print=None, access_log=None)
