"""Running the gateway: the API and the metrics port, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from cortex_gateway.app import create_app, create_metrics_app
from cortex_gateway.config import GatewayConfig, files_readable_by_others
from cortex_gateway.metrics import GatewayMetrics
from neuron.shared.connections import GuardedSite, quiet_parser_errors, raise_descriptor_limit, wait_for_stop_signal

log = logging.getLogger("cortex.gateway")
SHUTDOWN_GRACE_S = 30.0


async def serve(config: GatewayConfig) -> None:
    """Serve until a signal; then stop accepting, let requests finish (bounded), and return."""
    metrics = GatewayMetrics()
    raise_descriptor_limit()
    quiet_parser_errors()
    api = web.AppRunner(create_app(config, metrics=metrics), access_log=None, handle_signals=False,
                        shutdown_timeout=SHUTDOWN_GRACE_S, keepalive_timeout=config.idle_timeout_s,
                        handler_cancellation=True)  # a client that leaves cancels its upstream request
    scrape = web.AppRunner(create_metrics_app(metrics), access_log=None, handle_signals=False,
                           keepalive_timeout=config.idle_timeout_s)
    await api.setup()
    await scrape.setup()
    try:
        per_client = config.max_connections_per_client
        await GuardedSite(api, config.host, config.port, per_client=per_client).start()
        await GuardedSite(scrape, config.metrics_host, config.metrics_port, per_client=per_client).start()
        _warn_if_open(config)
        log.info("gateway on http://%s:%d (metrics on :%d/metrics), %d neuron(s), eviction %s",
                 config.host, config.port, config.metrics_port, len(config.neurons), config.strategy)
        await wait_for_stop_signal()
        log.info("stopping: finishing in-flight requests")
    finally:
        await scrape.cleanup()
        await api.cleanup()


def _warn_if_open(config: GatewayConfig) -> None:
    if config.auth.keys or config.auth.admin_keys:
        for path in files_readable_by_others(config):
            log.warning("%s holds keys and is readable by other users (mode %o); chmod 600 %s",
                        path, path.stat().st_mode & 0o777, path)
    if not _is_loopback(config.host) and not config.auth.keys:
        # Admin keys alone protect /admin, not /v1: say so, or an operator believes the API is closed.
        also = "" if config.auth.admin_keys else " and load and unload them"
        log.warning("listening on %s with no user keys: anyone who can reach port %d can use every model%s; "
                    "set [auth] keys (and admin_keys)", config.host, config.port, also)
    if not _is_loopback(config.metrics_host):
        log.warning("metrics on %s:%d are unauthenticated: firewall that port to your Prometheus",
                    config.metrics_host, config.metrics_port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def run(config: GatewayConfig) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(config))
