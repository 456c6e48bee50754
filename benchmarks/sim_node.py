"""A simulated node for the fleet benchmark: the real node protocol, a modelled speed and prefix cache.

It answers /health, /models, /models/available, /models/load, /models/unload and streaming
/v1/chat/completions with the project's own protocol types (neuron/shared/protocol.py), so the gateway
drives it as it drives a neuron. What a real node spends on compute is modelled with the clock instead:
each model has `slots` decoding slots (a request beyond them waits in the node's queue), a slot decodes
`tok_rate` tokens a second, and the first token comes after `base_s` plus the prompt's uncached tokens at
`prefill_rate`. The prefix cache is an LRU of the message prefixes the node has served (the prompt and the
answer it generated, as a KV cache keeps both), so a request's cached tokens are those of its deepest
prefix found there. The figures then do not depend on the machine's cores: the benchmark measures the
gateway's placement, not arithmetic.

Memory is modelled too: the node has `total_mb`, each model its catalog size, and a load that does not fit
beside what is loaded or loading is refused as the neuron refuses it (507 insufficient_memory), so the
gateway's evictions are what make room. A load takes `Speed.load_s` (an asyncio sleep: it costs the node
time, not the machine's CPU). Unload answers as neuron/engine/registry.py does: with `if_idle`, 409
model_busy while a request is in flight or queued there; 409 model_loading while it loads; 404 when absent
(without `if_idle` it unloads at once and lets the streams under way finish, where the neuron drains first).

Tokens are counted as 4 characters each, plus 4 per message for its framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from neuron.shared.errors import ApiError
from neuron.shared.protocol import (
    AvailableModel,
    DeviceInfo,
    Health,
    LoadRequest,
    ModelInfo,
    ModelLoad,
    UnloadRequest,
)
from tests.helpers import free_port

CHUNK_TOKENS = 5  # tokens per streamed event: 10 events a second per slot at 50 tok/s, light on the CPU
TOKEN = "tok "  # one token of answer, 4 characters


@dataclass
class Speed:
    """The modelled hardware: per model on a node."""

    slots: int = 4
    tok_rate: float = 50.0  # decoded tokens a second, per slot
    prefill_rate: float = 2000.0  # prompt tokens a second
    base_s: float = 0.02  # before the first token whatever the prompt
    load_s: float = 0.3  # a cold load (asyncio sleep inside /models/load)
    cache_prefixes: int = 1024  # prefixes the node's cache holds (LRU)


@dataclass
class Served:
    """What the node counted, for the benchmark's table."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    loads: list[str] = field(default_factory=list)  # models actually loaded, in order (not joins of a load)
    unloads: list[str] = field(default_factory=list)
    refused_loads: int = 0  # 507 insufficient_memory
    refused_unloads: int = 0  # 409 model_busy


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    """`app` on a free loopback port until the block ends; yields its URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def tokens(message: dict) -> int:
    return len(str(message.get("content") or "")) // 4 + 4


def prefix_keys(messages: list[dict]) -> list[bytes]:
    """Chained keys: key i stands for messages 1..i (the node's own, independent of the gateway's map)."""
    keys, prev = [], b""
    for m in messages:
        prev = hashlib.blake2b(prev + orjson.dumps(m, option=orjson.OPT_SORT_KEYS), digest_size=8).digest()
        keys.append(prev)
    return keys


class SimNode:
    """One node with one device of `total_mb`, models `loaded` at start and `catalog` (id -> MiB) loadable."""

    def __init__(self, name: str, catalog: dict[str, float], loaded: set[str], speed: Speed,
                 total_mb: float = 16_000.0):
        self.name, self.catalog, self.speed, self.total_mb = name, catalog, speed, total_mb
        self.loaded: set[str] = set()
        self.loading: dict[str, asyncio.Event] = {}  # set once the load ends
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.running: defaultdict[str, int] = defaultdict(int)
        self.cache: OrderedDict[bytes, None] = OrderedDict()
        self.served = Served()
        self.started = time.monotonic()
        for model in loaded:
            self._loaded(model)

    def _loaded(self, model: str) -> None:
        self.loaded.add(model)
        self.slots[model] = asyncio.Semaphore(self.speed.slots)

    def used_mb(self) -> float:
        return sum(self.catalog[m] for m in self.loaded | set(self.loading))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/models", self._models)
        app.router.add_get("/models/available", self._available)
        app.router.add_post("/models/load", self._load)
        app.router.add_post("/models/unload", self._unload)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    # -- lifecycle ------------------------------------------------------------------------------
    def _info(self, model: str, status: str = "loaded") -> dict:
        return ModelInfo(id=model, backend="sim", status=status, devices=["cpu"], memory_mb=self.catalog[model],
                         context_size=32768, path=f"/sim/{model}", spec={"max_in_flight": self.speed.slots}).to_dict()

    async def _health(self, _request: web.Request) -> web.Response:
        used = self.used_mb()
        loads = [ModelLoad(id=m, in_flight=self.in_flight[m], queue_depth=self.in_flight[m] - self.running[m],
                           decode_tps=self.speed.tok_rate, memory_mb=self.catalog[m], running=self.running[m],
                           slots=self.speed.slots) for m in sorted(self.loaded)]
        device = DeviceInfo(id="cpu", total_mb=self.total_mb, free_mb=self.total_mb - used, used_mb=used)
        return web.json_response(Health(name=self.name, uptime_s=time.monotonic() - self.started,
                                        devices=[device], models=loads).to_dict())

    async def _models(self, _request: web.Request) -> web.Response:
        infos = [self._info(m) for m in sorted(self.loaded)] + [self._info(m, "loading") for m in self.loading]
        return web.json_response({"models": infos, "failures": {}})

    async def _available(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [AvailableModel(id=m, format="gguf", path=f"/sim/{m}", size_mb=mb,
                                                            estimated_mb=mb).to_dict()
                                             for m, mb in self.catalog.items()]})

    async def _load(self, request: web.Request) -> web.Response:
        model = LoadRequest.from_dict(await request.json()).model
        if model in self.loading:  # a second ask joins the load under way, as the neuron's registry does
            await self.loading[model].wait()
        if model in self.loaded:
            return web.json_response(self._info(model))
        free = self.total_mb - self.used_mb()
        if self.catalog[model] > free:
            self.served.refused_loads += 1
            return _error(ApiError(507, "insufficient_memory",
                                   f"model {model!r} needs about {self.catalog[model]:.0f} MiB on cpu but "
                                   f"{max(free, 0):.0f} MiB is free; unload a model or choose other devices",
                                   code="insufficient_memory"))
        self.loading[model] = done = asyncio.Event()
        try:
            await asyncio.sleep(self.speed.load_s)
            self._loaded(model)
            self.served.loads.append(model)
        finally:
            del self.loading[model]
            done.set()
        return web.json_response(self._info(model))

    async def _unload(self, request: web.Request) -> web.Response:
        model, if_idle = (u := UnloadRequest.from_dict(await request.json())).model, u.if_idle
        if model in self.loading:
            return _error(ApiError(409, "invalid_request_error", f"model {model!r} is loading; unload it once "
                                   "that finishes", code="model_loading", retry_after=2))
        if model not in self.loaded:
            return _error(ApiError(404, "not_found_error", f"model {model!r} is not loaded on this node",
                                   code="model_not_found", param="model"))
        if if_idle and self.in_flight[model]:  # checked and unloaded with no await between: no request slips in
            self.served.refused_unloads += 1
            return _error(ApiError(409, "invalid_request_error", f"model {model!r} has requests in flight or "
                                   "queued; not unloaded", code="model_busy", retry_after=1))
        self.loaded.discard(model)
        self.served.unloads.append(model)
        return web.json_response({"id": model, "status": "unloaded"})

    # -- inference ------------------------------------------------------------------------------
    def _cached(self, keys: list[bytes], messages: list[dict]) -> int:
        """The tokens of the deepest prefix of `messages` in the cache (it becomes the most recent)."""
        for depth in range(len(keys), 0, -1):
            if keys[depth - 1] in self.cache:
                self.cache.move_to_end(keys[depth - 1])
                return sum(tokens(m) for m in messages[:depth])
        return 0

    def _remember(self, keys: list[bytes]) -> None:
        for key in keys:
            self.cache[key] = None
            self.cache.move_to_end(key)
        while len(self.cache) > self.speed.cache_prefixes:
            self.cache.popitem(last=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, messages = body["model"], body["messages"]
        if model not in self.loaded:
            return _error(ApiError(404, "not_found_error", f"model {model!r} is not loaded on this node",
                                   code="model_not_found", param="model"))
        self.in_flight[model] += 1
        try:
            async with self.slots[model]:
                self.running[model] += 1
                try:
                    return await self._stream(request, model, messages, int(body.get("max_tokens") or 64))
                finally:
                    self.running[model] -= 1
        finally:
            self.in_flight[model] -= 1

    async def _stream(self, request: web.Request, model: str, messages: list[dict], n: int) -> web.StreamResponse:
        speed, keys = self.speed, prefix_keys(messages)
        prompt = sum(tokens(m) for m in messages)
        cached = self._cached(keys, messages)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Cortex-Prompt-Tokens": str(prompt)})
        await resp.prepare(request)
        await asyncio.sleep(speed.base_s + (prompt - cached) / speed.prefill_rate)
        self._remember(keys)
        start, sent = time.monotonic(), 0
        while sent < n:
            step = min(CHUNK_TOKENS, n - sent)
            await resp.write(_chunk(model, {"content": TOKEN * step}))
            sent += step
            await asyncio.sleep(max(0.0, start + sent / speed.tok_rate - time.monotonic()))
        self._remember(prefix_keys([*messages, {"role": "assistant", "content": TOKEN * n}]))
        served = self.served
        served.requests, served.prompt_tokens = served.requests + 1, served.prompt_tokens + prompt
        served.cached_tokens, served.completion_tokens = served.cached_tokens + cached, served.completion_tokens + n
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        await resp.write(_chunk(model, {}, "stop") + _event({"id": "chatcmpl-sim", "object": "chat.completion.chunk",
                                                             "created": 0, "model": model, "choices": [],
                                                             "usage": usage}) + b"data: [DONE]\n\n")
        return resp


def _error(err: ApiError) -> web.Response:
    """The neuron's error answer: its envelope, status and Retry-After (neuron/shared/errors.py)."""
    return web.json_response(err.envelope(), status=err.status, headers=err.headers())


def _event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return _event({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
