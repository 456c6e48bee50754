"""The gateway's aiohttp applications: `create_app(config)` (API) and `create_metrics_app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from cortex_gateway import admin, catalogue, openai
from cortex_gateway.anthropic import handlers as anthropic
from cortex_gateway.auth import AUTH, LIMITER, KeyLimiter, api_auth
from cortex_gateway.config import GatewayConfig
from cortex_gateway.errors import renderer_for
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics, count_refusals
from cortex_gateway.responses import handlers as responses
from cortex_gateway.responses.store import ResponseStore
from cortex_gateway.state import FLEET, KEEPALIVE_S, LIFECYCLE, METRICS, RESPONSE_STORE, SESSION
from neuron.errors import error_middleware
from neuron.http import body_limits

log = logging.getLogger("cortex.gateway")


def create_app(config: GatewayConfig, *, session: aiohttp.ClientSession | None = None,
               metrics: GatewayMetrics | None = None) -> web.Application:
    max_bytes = int(config.max_body_mb * 2**20)
    app_metrics = metrics or GatewayMetrics()
    # Outermost, the refusal counter sees every answer, errors rendered by the middleware inside it included.
    middlewares = [count_refusals(app_metrics), error_middleware(renderer_for, "gateway"),
                   body_limits(max_bytes, config.body_timeout_s)]
    if config.auth.keys:
        middlewares.insert(2, api_auth)  # keys checked before a body is read; no layer at all without keys
    app = web.Application(middlewares=middlewares, client_max_size=max_bytes)
    app[METRICS] = app_metrics
    app[KEEPALIVE_S] = config.keepalive_s
    app[AUTH] = config.auth
    app[LIMITER] = KeyLimiter(config.auth)
    app[RESPONSE_STORE] = ResponseStore(config.responses_store_max, config.responses_store_ttl_s)
    app.cleanup_ctx.append(_fleet_ctx(config, session))
    catalogue.add_routes(app)
    openai.add_routes(app)
    anthropic.add_routes(app)
    responses.add_routes(app)
    admin.add_routes(app)
    return app


def _fleet_ctx(config: GatewayConfig, given: aiohttp.ClientSession | None):
    async def ctx(app: web.Application):
        # Many small requests to few hosts: keep connections open, no per-host cap below our concurrency.
        # sock_read bounds the silence of a hung neuron mid-answer; there is no total: answers can be long.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=config.upstream_read_timeout_s)
        session = given or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                                 timeout=timeout)
        fleet = Fleet(config.neurons, session, down_after=config.down_after, poll_timeout=config.poll_timeout_s)
        app[SESSION], app[FLEET] = session, fleet
        app[LIFECYCLE] = Lifecycle(config, fleet, app[METRICS])
        app[METRICS].watch_fleet(fleet)
        await fleet.poll_all()
        poller = asyncio.create_task(fleet.run_poller(config.poll_interval_s))
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        if given is None:
            await session.close()

    return ctx


def create_metrics_app(metrics: GatewayMetrics) -> web.Application:
    async def serve_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    return app
