"""A stand-in for an external engine (vLLM, SGLang, llama-server) that records how it was started.

`python tests/fake_engine.py NAME ARGS...` writes its argv, its CUDA_VISIBLE_DEVICES and its pid
to $FAKE_ENGINE_RECORD/NAME.json, forks one worker (as vLLM does, so a stop must reach the
process group), then serves on the --port its command line names: /health, the OpenAI chat and
completions routes (streamed or not, a fixed answer with usage), vLLM's /tokenize, llama-server's
/apply-template and /tokenize. An argument `bogus` (a value no engine takes) or one starting with --bogus
makes it print an error, with the absolute paths of its command line and its own file as a real
engine's traceback would, and exit at once;
FAKE_ENGINE_HEALTH_DELAY_S delays its health route; a chat asking for the model "die" makes it exit
mid-stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

ANSWER = ["fake ", "engine ", "says ", "hi"]


def port_of(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def record(name: str, argv: list[str], worker: int) -> None:
    folder = os.environ.get("FAKE_ENGINE_RECORD")
    if folder:
        Path(folder, f"{name}.json").write_text(json.dumps({
            "argv": argv, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
            "worker": worker}))


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def make_app(started: float) -> web.Application:
    delay = float(os.environ.get("FAKE_ENGINE_HEALTH_DELAY_S", "0"))

    async def health(_request):
        if time.monotonic() - started < delay:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def chat(request):
        body = await request.json()
        model = body.get("model", "")
        usage = {"prompt_tokens": 7, "completion_tokens": len(ANSWER), "total_tokens": 7 + len(ANSWER)}
        if body.get("max_tokens") == 999999:
            return web.json_response({"error": {"message": "max_tokens is too large for this engine",
                                                "type": "BadRequestError", "code": 400}}, status=400)
        if not body.get("stream"):
            return web.json_response({"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                                      "model": model, "usage": usage, "choices": [{
                                          "index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "".join(ANSWER)}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(ANSWER):
            if i == 2 and "die" in json.dumps(body.get("messages")):
                os._exit(9)  # the engine dies mid-answer
            await resp.write(chunk(model, {"content": piece}))
        await resp.write(chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                                     "created": 0, "model": model, "choices": [],
                                                     "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def tokenize(request):
        body = await request.json()
        if "content" in body:  # llama-server
            return web.json_response({"tokens": list(range(len(body["content"].split())))})
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        return web.json_response({"count": words + 3, "max_model_len": 2048, "tokens": []})

    async def apply_template(request):
        body = await request.json()
        return web.json_response({"prompt": " ".join(f"<{m['role']}> {m.get('content', '')}"
                                                     for m in body.get("messages", []))})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/apply-template", apply_template)
    return app


def main() -> None:
    name, argv = sys.argv[1], sys.argv[2:]
    bad = [a for a in argv if a.startswith("--bogus") or a == "bogus"]
    if bad:
        paths = " ".join(a for a in argv if a.startswith("/"))
        print(f'  File "{Path(__file__).resolve()}", line 1, in main\n    loading {paths}', flush=True)
        print(f"{name}: error: unrecognized or invalid arguments: {' '.join(bad)}", flush=True)
        sys.exit(3)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # as vLLM forks workers
    record(name, argv, worker.pid)
    print(f"{name}: serving on {port_of(argv)}", flush=True)
    web.run_app(make_app(time.monotonic()), host="127.0.0.1", port=port_of(argv), print=None)


if __name__ == "__main__":
    main()
