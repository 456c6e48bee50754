"""The gateway's aiohttp applications: `create_app(config)` (API) and `create_metrics_app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from cortex_gateway import (
    admin_routes,
    catalog_routes,
    console_routes,
    metering,
    openai_routes,
    recent_requests,
    status_stream,
    usage_routes,
)
from cortex_gateway.anthropic import routes as anthropic_routes
from cortex_gateway.auth import AUTH, KEY_NAME, LIMITER, KeyLimiter
from cortex_gateway.config import CONTROL_CONNECTIONS_PER_NODE, GatewayConfig
from cortex_gateway.errors import renderer_for
from cortex_gateway.fleet import Fleet
from cortex_gateway.keep_alive import KeepAlive
from cortex_gateway.key_auth import api_auth, keys_ctx
from cortex_gateway.learned_memory import LearnedMemoryStore
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import RECORD, GatewayMetrics, count_refusals
from cortex_gateway.node_watch import NodeWatch
from cortex_gateway.responses import routes as responses_routes
from cortex_gateway.responses.store import ResponseStore
from cortex_gateway.scaler import Replicas
from cortex_gateway.shared_admin import shared_admin_ctx
from cortex_gateway.shared_events import shared_events_ctx
from cortex_gateway.state import FLEET, KEEPALIVE_S, LIFECYCLE, METRICS, RESPONSE_STORE, SESSION
from cortex_gateway.state_db.gateway import state_ctx
from neuron.shared import request_context
from neuron.shared.errors import error_middleware
from neuron.shared.http import body_limits
from neuron.shared.request_context import access_log, request_id_middleware
from neuron.shared.sse import WRITE_TIMEOUT_S

log = logging.getLogger("cortex.gateway")
ACCESS_LOG = logging.getLogger("cortex.gateway.access")


def access_details(request: web.Request) -> dict:
    """What the access log adds from the request's record: model, node, tokens, timings, the key's name."""
    rec = request.get(RECORD)
    out = {"key": request.get(KEY_NAME)}
    if rec is not None:
        ttft = None if rec.first_token_at is None else round(rec.first_token_at - rec.started, 4)
        out.update(model=rec.model, node=rec.node or None, endpoint=rec.endpoint, prompt_tokens=rec.prompt_tokens,
                   completion_tokens=rec.completion_tokens, ttft_s=ttft, error=rec.error_type)
    return out


# What Prometheus, load balancers and `cortex top` poll: logged at debug unless it fails.
POLLED_PATHS = ("/health", "/metrics", "/admin/status", "/admin/status/stream")


def create_app(config: GatewayConfig, *, session: aiohttp.ClientSession | None = None,
               metrics: GatewayMetrics | None = None) -> web.Application:
    max_bytes = int(config.max_body_mb * 2**20)
    app_metrics = metrics or GatewayMetrics()
    # Outermost, the request id (every line and answer carries it) and the access log (one line per request,
    # refusals included, each also kept for the console); then the refusal counter, which sees every answer
    # the error middleware renders.
    middlewares = [request_id_middleware, access_log(ACCESS_LOG, access_details, POLLED_PATHS, recent_requests.record),
                   count_refusals(app_metrics), error_middleware(renderer_for, "gateway"),
                   api_auth, body_limits(max_bytes, config.body_timeout_s)]  # keys checked before a body is read
    app = web.Application(middlewares=middlewares, client_max_size=max_bytes)
    request_context.install(app)
    recent_requests.install(app)  # the console's last requests, the access log's fields
    app[METRICS] = app_metrics
    app[KEEPALIVE_S] = config.keepalive_s
    app[WRITE_TIMEOUT_S] = config.write_timeout_s  # every client stream's write deadline
    app[AUTH] = config.auth
    app[LIMITER] = KeyLimiter()
    app[RESPONSE_STORE] = ResponseStore(config.responses_store_max, config.responses_store_ttl_s,
                                        max_bytes=int(config.responses_store_max_mb * 2**20),
                                        max_response_bytes=int(config.responses_store_max_response_mb * 2**20))
    app.cleanup_ctx.append(state_ctx(config))  # first: opened before the fleet starts, closed after it stops
    app.cleanup_ctx.append(keys_ctx(config.auth))  # the keys, config and database, in memory before a request
    app.cleanup_ctx.append(_fleet_ctx(config, session))
    app.cleanup_ctx.append(shared_admin_ctx(config.poll_interval_s))  # pins and drains of every gateway
    app.cleanup_ctx.append(shared_events_ctx())  # on PostgreSQL, the fleet's events of every gateway
    catalog_routes.add_routes(app)
    openai_routes.add_routes(app)
    anthropic_routes.add_routes(app)
    responses_routes.add_routes(app)
    usage_routes.add_routes(app)  # /admin/usage, before the /admin sub-app
    admin_routes.add_routes(app)
    status_stream.install(app, admin_routes.status_body)  # /admin/status/stream's one feed
    console_routes.add_routes(app)  # /ui: the web console's files, open; its calls carry the key
    metering.setup(app, config.max_key_labels)  # budgets and TPM per key (docs/budgets.md)
    return app


def _fleet_ctx(config: GatewayConfig, given: aiohttp.ClientSession | None):
    async def ctx(app: web.Application):
        relays, control = given or _relay_session(config), given or _control_session()
        fleet = Fleet(config.neurons, control, down_after=config.down_after, poll_timeout=config.poll_timeout_s)
        app[SESSION], app[FLEET] = relays, fleet
        app[LIFECYCLE] = Lifecycle(config, fleet, app[METRICS], LearnedMemoryStore.in_dir(config.state_dir))
        replicas = Replicas(app[LIFECYCLE])
        app[METRICS].watch_fleet(fleet, lambda: catalog_routes.cached_catalog(app), config.strategy,
                                 frozenset(replicas.bounds))
        await fleet.poll_all()
        tasks = [asyncio.create_task(fleet.run_poller(config.poll_interval_s))]
        if config.node_streams:  # watched nodes push their changes; the poller skips them
            tasks.append(asyncio.create_task(NodeWatch(fleet, config.poll_interval_s).run()))
        # Rounds beside the poller, each only when some model needs them: keep-alive, replicas.
        for rounds in (KeepAlive(app[LIFECYCLE]), replicas):
            if rounds.interval is not None:
                tasks.append(asyncio.create_task(rounds.run(rounds.interval)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if given is None:
            await asyncio.gather(relays.close(), control.close())

    return ctx


def _relay_session(config: GatewayConfig) -> aiohttp.ClientSession:
    """Inference relays: connections kept open, at most `max_connections_per_node` to one neuron (requests
    beyond it wait for one), below the neuron's per-client cap. sock_read bounds the silence of a hung
    neuron mid-answer; there is no total: answers can be long, and a wait for a connection is a queue."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=config.upstream_read_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=config.max_connections_per_node)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def _control_session() -> aiohttp.ClientSession:
    """Polls, loads and admin calls (each with its own timeout): a pool of their own, so a node whose relay
    connections are all busy still answers its polls and is not marked down for it."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=CONTROL_CONNECTIONS_PER_NODE)
    return aiohttp.ClientSession(connector=connector)


def create_metrics_app(metrics: GatewayMetrics) -> web.Application:
    async def serve_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    return app
