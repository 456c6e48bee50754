"""A scriptable neuron for in-process gateway tests: it holds, fails or dies on cue.

It speaks the node protocol the gateway polls and drives (/health, /models,
/models/available, /models/load, /models/unload, /v1/chat/completions) from a
few dicts, and lets a test stop a load or a stream at a `Cue`: the fake sets
`arrived`, then waits until the test calls `release()`. A race is then played
step by step with events, never with sleeps (llama-swap's fakeProcess).
benchmarks/fake_neuron.py is the other fake: fixed and instant, for overhead only.

It imports nothing from `neuron` on purpose: it is a second, independent
speaker of the protocol, so tests over it check the gateway against the wire
shapes, not against the neuron's own types.
"""

from __future__ import annotations

import asyncio
import collections

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

DONE = b"data: [DONE]\n\n"


class Cue:
    """A point where a request waits: the fake sets `arrived`, the test calls `release()`."""

    def __init__(self):
        self.arrived = asyncio.Event()
        self._released = asyncio.Event()

    async def hold(self) -> None:
        self.arrived.set()
        await self._released.wait()

    def release(self) -> None:
        self._released.set()


def error(status: int, code: str, message: str, type_: str = "invalid_request_error") -> web.Response:
    """An OpenAI error envelope, as the neuron sends it: the gateway acts on `code`."""
    body = {"error": {"message": message, "type": type_, "code": code, "param": None}}
    return web.json_response(body, status=status)


def event(data: dict) -> bytes:
    # Compact JSON, as the neuron frames it: the gateway spots first content by '"content":"'.
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


class FakeNeuron:
    """One node with one device: models loaded (id -> MiB) and loadable (id -> estimated MiB).

    Script it through the attributes below before (or during) a scenario; read
    what it received from the counters.
    """

    def __init__(self, name: str, *, loaded: dict[str, float] | None = None,
                 available: dict[str, float] | None = None, total_mb: float = 16_000.0,
                 failures: list[str] | None = None):
        self.name = name
        self.total_mb = total_mb
        self.loaded = dict(loaded or {})
        self.catalog = {**(available or {}), **self.loaded}  # what /models/available lists
        self.loading: set[str] = set()
        self.in_flight: collections.Counter[str] = collections.Counter()
        # Script. `failures` is consumed by chat requests in order ("drop" or "recovering"); pass one
        # list to several fakes to fail whichever node the gateway happens to choose first.
        self.failures = failures if failures is not None else []
        self.reported_in_flight: dict[str, int] = {}  # /health reports this whatever is true: a stale poll
        self.queue_depth: dict[str, int] = {}  # /health reports these requests queued (from other clients)
        self.busy: set[str] = set()  # an unload with if_idle is refused for these (409 model_busy)
        self.load_cue: Cue | None = None  # every load waits here
        self.stream_death: Cue | None = None  # the next stream waits here after two pieces, then dies
        self.headers_cue: Cue | None = None  # the next stream waits here before its headers (a queue)
        self.headers_refusal: web.Response | None = None  # ...and then answers this instead of streaming
        self.prefill_cue: Cue | None = None  # the next stream sends a keep-alive comment and waits here
        # Received.
        self.hits: collections.Counter[str] = collections.Counter()  # "GET /health" -> count
        self.loads: list[str] = []
        self.unloads: list[dict] = []  # request bodies, to see `if_idle`
        self.chats: list[dict] = []
        self.failed: list[str] = []  # the failures it applied
        self._server: TestServer | None = None

    # -- script ---------------------------------------------------------------------
    def hold_loads(self) -> Cue:
        self.load_cue = Cue()
        return self.load_cue

    def hold_headers(self, refusal: web.Response | None = None) -> Cue:
        """The next stream waits before its headers (a queue), then streams, or answers `refusal`."""
        self.headers_cue, self.headers_refusal = Cue(), refusal
        return self.headers_cue

    def hold_prefill(self) -> Cue:
        self.prefill_cue = Cue()
        return self.prefill_cue

    def die_mid_stream(self) -> Cue:
        self.stream_death = Cue()
        return self.stream_death

    def pieces(self) -> tuple[str, ...]:
        """The streamed answer; a stream that dies sends the first two only."""
        return "hello ", "from ", self.name

    @property
    def free_mb(self) -> float:
        return self.total_mb - sum(self.loaded.values())

    # -- server ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return str(self._server.make_url("")).rstrip("/")

    async def start(self) -> str:
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server()
        return self.url

    def release_all(self) -> None:
        """Let every held request go, so that a failed test still shuts down promptly."""
        for cue in (self.load_cue, self.stream_death, self.headers_cue, self.prefill_cue):
            if cue is not None:
                cue.release()

    async def close(self) -> None:
        self.release_all()
        if self._server is not None:
            await self._server.close()

    def app(self) -> web.Application:
        @web.middleware
        async def count(request: web.Request, handler):
            self.hits[f"{request.method} {request.path}"] += 1
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_get("/health", self._health)
        app.router.add_get("/models", self._models)
        app.router.add_get("/models/available", self._available)
        app.router.add_post("/models/load", self._load)
        app.router.add_post("/models/unload", self._unload)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    # -- lifecycle API --------------------------------------------------------------
    def _info(self, model: str, status: str) -> dict:
        return {"id": model, "backend": "llama.cpp", "status": status, "devices": ["cpu"],
                "memory_mb": self.loaded.get(model, 0.0), "context_size": 2048,
                "path": f"/models/{model}.gguf", "load_time_s": None, "spec": None, "phase": ""}

    async def _health(self, _request: web.Request) -> web.Response:
        models = [{"id": m, "status": "loaded", "in_flight": self.reported_in_flight.get(m, self.in_flight[m]),
                   "queue_depth": self.queue_depth.get(m, 0), "decode_tps": 50.0, "memory_mb": mb}
                  for m, mb in self.loaded.items()]
        device = {"id": "cpu", "kind": "cpu", "total_mb": self.total_mb, "free_mb": self.free_mb,
                  "used_mb": self.total_mb - self.free_mb}
        return web.json_response({"status": "ok", "name": self.name, "uptime_s": 1.0, "devices": [device],
                                  "models": models})

    async def _models(self, _request: web.Request) -> web.Response:
        infos = [self._info(m, "loaded") for m in self.loaded] + [self._info(m, "loading") for m in self.loading]
        return web.json_response({"models": infos, "failures": {}})

    async def _available(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"id": m, "format": "gguf", "path": f"/models/{m}.gguf", "size_mb": mb, "estimated_mb": mb}
            for m, mb in self.catalog.items()]})

    async def _load(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        self.loads.append(model)
        if model in self.loaded:
            return web.json_response(self._info(model, "loaded"))
        need = self.catalog.get(model)
        if need is None:
            return error(404, "model_not_found", f"no model {model!r} on {self.name}")
        if need > self.free_mb:
            return error(507, "insufficient_memory", f"{model!r} needs {need} MiB, {self.free_mb} free",
                         "server_error")
        self.loading.add(model)
        try:
            if self.load_cue is not None:
                await self.load_cue.hold()
        finally:
            self.loading.discard(model)
        self.loaded[model] = need
        return web.json_response(self._info(model, "loaded"))

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.unloads.append(body)
        model = body.get("model")
        if model not in self.loaded:
            return error(404, "model_not_found", f"{model!r} is not loaded on {self.name}")
        if body.get("if_idle") and (model in self.busy or self.in_flight[model]):
            return error(409, "model_busy", f"{model!r} has requests in flight on {self.name}")
        del self.loaded[model]
        return web.json_response({"id": model, "status": "unloaded"})

    # -- inference ------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chats.append(body)
        model = body.get("model")
        if self.failures:
            return self._fail(request, self.failures.pop(0))
        if model not in self.loaded:
            return error(404, "model_not_found", f"{model!r} is not loaded on {self.name}")
        self.in_flight[model] += 1
        try:
            if body.get("stream"):
                return await self._stream(request, model)
            return web.json_response(self._completion(model))
        finally:
            self.in_flight[model] -= 1

    def _fail(self, request: web.Request, kind: str) -> web.Response:
        """Fail before a byte of answer: a dropped connection, or a retryable 503."""
        self.failed.append(kind)
        if kind == "recovering":
            return error(503, "model_recovering", "the model is being reloaded; retry shortly", "server_error")
        assert kind == "drop", f"unknown failure {kind!r}"
        request.transport.abort()
        return web.Response()  # never sent: the connection is gone

    async def _stream(self, request: web.Request, model: str) -> web.StreamResponse:
        queue, self.headers_cue = self.headers_cue, None
        if queue is not None:
            await queue.hold()
            refusal, self.headers_refusal = self.headers_refusal, None
            if refusal is not None:
                return refusal
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Cortex-Prompt-Tokens": "3"})
        await resp.prepare(request)
        prefill, self.prefill_cue = self.prefill_cue, None
        if prefill is not None:  # as the neuron does while a long prompt prefills
            await resp.write(b": keep-alive\n\n")
            await prefill.hold()
        death, self.stream_death = self.stream_death, None
        for i, piece in enumerate(self.pieces()):
            if death is not None and i == 2:
                await death.hold()
                request.transport.abort()  # mid-answer: no last chunk, no [DONE]
                return resp
            await resp.write(chunk(model, {"content": piece}))
        usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        await resp.write(chunk(model, {}, "stop") + event({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                                          "created": 0, "model": model, "choices": [],
                                                          "usage": usage}) + DONE)
        return resp

    def _completion(self, model: str) -> dict:
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(self.pieces())}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
