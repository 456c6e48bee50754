"""The neuron's aiohttp application: `create_app(config)` for the CLI and the tests alike."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from neuron.engine.faults import FaultInjector, injection_enabled
from neuron.engine.inference import InferenceEngine
from neuron.engine.registry import Registry
from neuron.pulls.puller import Puller
from neuron.server import audio_routes, embedding_routes, image_routes, lifecycle_routes, openai_routes, rerank_routes
from neuron.server.demo import ensure_demo_model
from neuron.server.devices import DeviceTable
from neuron.server.metrics import NeuronMetrics
from neuron.server.state import (
    ACCESS,
    ENGINE,
    ENGINE_SESSION,
    FAULTS,
    KEEPALIVE_S,
    METRICS,
    NODE_NAME,
    PULLER,
    REGISTRY,
    STARTED_AT,
)
from neuron.shared import request_context
from neuron.shared.auth import TOKEN, token_auth
from neuron.shared.config import NeuronConfig, is_loopback
from neuron.shared.errors import ApiError, error_middleware, render_openai
from neuron.shared.http import body_limits
from neuron.shared.protocol import LoadRequest
from neuron.shared.request_context import access_log, request_id_middleware
from neuron.shared.serving import Listener, run_until_signal, serve_until_signal
from neuron.shared.sse import WRITE_TIMEOUT_S

log = logging.getLogger("cortex.neuron")
ACCESS_LOG = logging.getLogger("cortex.neuron.access")


def access_details(request: web.Request) -> dict:
    """The access log's model, tokens and time to first token, as the inference route left them."""
    return dict(request.get(ACCESS) or {})


# What the gateway polls every second or so: logged at debug unless it fails.
POLLED_PATHS = ("/health", "/health/stream", "/metrics", "/models", "/models/available", "/models/pulls")


def create_app(config: NeuronConfig, *, devices: DeviceTable | None = None) -> web.Application:
    max_bytes = int(config.max_body_mb * 2**20)
    middlewares = [request_id_middleware, access_log(ACCESS_LOG, access_details, POLLED_PATHS),
                   error_middleware(lambda _path: render_openai, "neuron"), token_auth,
                   body_limits(max_bytes, config.body_timeout_s)]
    app = web.Application(middlewares=middlewares, client_max_size=max_bytes)
    request_context.install(app)
    app[TOKEN] = config.token
    faults = FaultInjector(injection_enabled())
    devices = devices or DeviceTable(config.gpus, config.cpu_memory_mb)
    registry = Registry(devices, config.models_dir, faults, config.admission, tuple(config.model_roots))
    app[REGISTRY] = registry
    app[PULLER] = registry.puller = Puller(config.models_dir, devices, on_cpu=devices.ids == ["cpu"])
    registry.engines, registry.engine_start_timeout_s = config.engines, config.engine_start_timeout_s
    app[ENGINE] = InferenceEngine(registry, faults)
    app[METRICS] = metrics = NeuronMetrics(registry)
    registry.on_loaded = lambda entry: metrics.load_seconds.labels(entry.id).observe(entry.load_time_s)
    app[KEEPALIVE_S] = config.keepalive_s
    app[WRITE_TIMEOUT_S] = config.write_timeout_s  # every stream's write deadline
    app[FAULTS] = faults
    app[NODE_NAME] = config.name
    app[STARTED_AT] = time.monotonic()
    openai_routes.add_routes(app)
    embedding_routes.add_routes(app)
    rerank_routes.add_routes(app)
    image_routes.add_routes(app)
    audio_routes.add_routes(app)
    lifecycle_routes.add_routes(app, faults.enabled)
    app.cleanup_ctx.append(_lifetime(config))
    return app


def _lifetime(config: NeuronConfig):
    async def ctx(app: web.Application):
        registry = app[REGISTRY]
        # Relays to external engines: no total bound (answers can be long), no pool limit below our slots.
        app[ENGINE_SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                                    connector=aiohttp.TCPConnector(limit=0))
        task = asyncio.create_task(_preload(registry, config.preload)) if config.preload else None
        yield
        if task:
            task.cancel()
        log.info("unloading %d model(s)", len(registry.models))
        app[ENGINE].close()
        app[PULLER].close()
        await registry.close()
        await app[ENGINE_SESSION].close()
        registry.devices.close()

    return ctx


async def _preload(registry: Registry, items: list[dict]) -> None:
    for item in items:
        try:
            entry = await registry.load(LoadRequest.from_dict(item))
            log.info("preloaded %s", entry.id)
        except ApiError as err:
            log.error("preload of %s failed: %s", item.get("model"), err.message)


def run(config: NeuronConfig) -> None:
    """Serve until SIGTERM/SIGINT; then finish in-flight requests (bounded), unload, exit 0."""
    if config.private_network and not config.token and not is_loopback(config.host):
        log.warning("listening on %s:%d with no token (--private-network): anyone who can reach this port "
                    "can load models and run inference", config.host, config.port)
    if config.demo and (demo_id := ensure_demo_model(config.models_dir)) is not None:
        config.preload.append({"model": demo_id})
    run_until_signal(lambda: serve(config))


async def serve(config: NeuronConfig) -> None:
    """Serve until a signal; then stop accepting, let requests finish (bounded), unload everything."""
    await serve_until_signal([Listener(create_app(config), config.host, config.port)], config, log,
                             lambda: log.info("neuron %s on http://%s:%d, models from %s", config.name, config.host,
                                              config.port, config.models_dir))
