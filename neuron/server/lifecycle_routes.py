"""The lifecycle API the gateway and the CLI drive: what can load, what is loaded, load, unload, health."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiohttp import web

from neuron.engine.faults import FAULT_KINDS
from neuron.pulls.disk import delete_model
from neuron.server import conditional
from neuron.server.catalog import estimate_mb, scan
from neuron.server.health_feed import HEALTH_FEED, HealthFeed, health_stream_route
from neuron.server.state import FAULTS, METRICS, NODE_NAME, PULLER, REGISTRY, STARTED_AT
from neuron.shared import health_stream
from neuron.shared.errors import bad_request
from neuron.shared.fields import req_str, require_object
from neuron.shared.http import json_response, read_json
from neuron.shared.protocol import AvailableModel, Health, LoadRequest, ModelLoad, PullRequest, UnloadRequest

LISTING_S = 2.0  # how often a watched node rescans its models folder for the listing's tag (as a poll would)


def available_payload(app: web.Application) -> dict:
    registry = app[REGISTRY]
    on_cpu = registry.devices.ids == ["cpu"]
    models = [AvailableModel(r.id, r.format, r.shown_path, round(r.size_mb, 2), round(estimate_mb(r, None, on_cpu), 1),
                             r.kind) for r in scan(registry.models_dir)]
    return {"models": [m.to_dict() for m in models]}


def models_payload(app: web.Application) -> dict:
    registry = app[REGISTRY]
    return {"models": [m.info().to_dict() for m in registry.models.values()], "failures": registry.failures,
            "pulls": [p.to_dict() for p in app[PULLER].states()]}


async def available(request: web.Request) -> web.Response:
    return conditional.json_answer(request, available_payload(request.app))


async def models(request: web.Request) -> web.Response:
    return conditional.json_answer(request, models_payload(request.app))


async def pull(request: web.Request) -> web.Response:
    """Start (or join) a pull from the hub; with `wait`, answer when it is done (or has failed)."""
    req = PullRequest.from_dict(await read_json(request))
    puller = request.app[PULLER]
    job = puller.start(req.source)
    if req.wait:
        await asyncio.shield(job.task)  # raises the pull's own error, rendered by the middleware
    return json_response(job.state.to_dict(), status=200 if job.state.finished else 202)


async def delete(request: web.Request) -> web.Response:
    data = require_object(await read_json(request))
    registry = request.app[REGISTRY]
    loaded = {e.id: Path(e.ref.path) for e in registry.models.values() if not e.ref.remote}
    return json_response(delete_model(registry.models_dir, req_str(data, "model"), loaded).to_dict())


async def pulls(request: web.Request) -> web.Response:
    return json_response({"pulls": [p.to_dict() for p in request.app[PULLER].states()]})


async def load(request: web.Request) -> web.Response:
    req = LoadRequest.from_dict(await read_json(request))
    # Shielded: a client that hangs up mid-load must not orphan weights half-way onto a device.
    entry = await asyncio.shield(request.app[REGISTRY].load(req))
    return json_response(entry.info().to_dict())


async def unload(request: web.Request) -> web.Response:
    req = UnloadRequest.from_dict(await read_json(request))
    entry = await asyncio.shield(request.app[REGISTRY].unload(req.model, if_idle=req.if_idle))
    return json_response({"id": entry.id, "status": "unloaded"})


async def health(request: web.Request) -> web.Response:
    """The node's health, with the ETags of /models and /models/available in it (one poll, not three, on a
    node where nothing changed). Its own tag leaves out the uptime, which moves on every call."""
    health, tag = health_answer(request.app)
    return conditional.answer(request, orjson.dumps(health.to_dict()), tag)


def health_answer(app: web.Application, available_etag: str | None = None) -> tuple[Health, str]:
    """The health answer now (its uptime current) and its tag, which leaves the uptime out; the tag of
    /models/available is computed unless given (it scans the models folder)."""
    registry = app[REGISTRY]
    models = [_load_of(m) for m in registry.models.values()]
    if available_etag is None:
        available_etag = conditional.tag_of(orjson.dumps(available_payload(app)))
    health = Health("ok", app[NODE_NAME], 0.0, registry.devices.snapshot(), models,
                    models_etag=conditional.tag_of(orjson.dumps(models_payload(app))), available_etag=available_etag)
    tag = conditional.tag_of(orjson.dumps(health.to_dict()) + repr(app[STARTED_AT]).encode())
    health.uptime_s = round(time.monotonic() - app[STARTED_AT], 3)
    return health, tag


def _health_feed(app: web.Application) -> HealthFeed:
    """The streamed health: checked every CHECK_S, the models folder's listing (a scan) every LISTING_S."""
    scanned = {"at": -LISTING_S, "tag": ""}

    def compute() -> tuple[Health, str]:
        now = time.monotonic()
        if now - scanned["at"] >= LISTING_S:
            scanned["at"], scanned["tag"] = now, conditional.tag_of(orjson.dumps(available_payload(app)))
        return health_answer(app, scanned["tag"])

    return HealthFeed(compute)


def _load_of(entry) -> ModelLoad:
    adm, batcher = entry.admission, getattr(entry.backend, "batcher", None)
    job = getattr(entry.backend, "drawing", None)  # an image model's job under way (neuron.engine.images)
    return ModelLoad(entry.id, entry.status, adm.in_flight if adm else 0, adm.queue_depth if adm else 0,
                     round(entry.decode_tps, 2), round(entry.memory_mb, 1),
                     batcher.running() if batcher else 0, len(batcher.slots) if batcher else 0,
                     job.step if job else 0, job.steps if job else 0,
                     getattr(batcher, "drafted", 0), getattr(batcher, "draft_accepted", 0))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def arm_fault(request: web.Request) -> web.Response:
    """Debug endpoint, present only with CORTEX_FAULT_INJECTION=1."""
    data = require_object(await read_json(request))
    kind = data.get("fault")
    if kind not in FAULT_KINDS:
        raise bad_request(f"fault: expected one of {', '.join(FAULT_KINDS)}", param="fault")
    numbers = {k: data.get(k, d) for k, d in (("count", 1), ("after_tokens", 0), ("delay_ms", 0))}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers.values()):
        raise bad_request("count, after_tokens and delay_ms: expected non-negative integers")
    model = req_str(data, "model")
    request.app[FAULTS].arm(model, kind, **numbers)
    return json_response({"armed": {"model": model, "fault": kind, **numbers}})


def add_routes(app: web.Application, faults_enabled: bool) -> None:
    app.router.add_get("/models/available", available)
    app.router.add_get("/models", models)
    app.router.add_post("/models/load", load)
    app.router.add_post("/models/unload", unload)
    app.router.add_post("/models/pull", pull)
    app.router.add_get("/models/pulls", pulls)
    app.router.add_post("/models/delete", delete)
    app.on_shutdown.append(app[PULLER].on_shutdown)  # pulls stop when the grace starts: their waiters are answered
    app.router.add_get("/health", health)
    app[HEALTH_FEED] = feed = _health_feed(app)
    app.on_shutdown.append(feed.close)  # before the grace: the streams end, the gateways fall back to polls
    app.router.add_get(health_stream.PATH, health_stream_route)
    app.router.add_get("/metrics", metrics)
    if faults_enabled:
        app.router.add_post("/debug/faults", arm_fault)
