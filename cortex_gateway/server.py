"""Running the gateway: the API and the metrics port, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from cortex_gateway.app import create_app, create_metrics_app
from cortex_gateway.config import GatewayConfig, files_readable_by_others
from cortex_gateway.metrics import GatewayMetrics

log = logging.getLogger("cortex.gateway")
SHUTDOWN_GRACE_S = 30.0


async def serve(config: GatewayConfig) -> None:
    """Serve until a signal; then stop accepting, let requests finish (bounded), and return."""
    metrics = GatewayMetrics()
    api = web.AppRunner(create_app(config, metrics=metrics), access_log=None, handle_signals=False,
                        shutdown_timeout=SHUTDOWN_GRACE_S)
    scrape = web.AppRunner(create_metrics_app(metrics), access_log=None, handle_signals=False)
    await api.setup()
    await scrape.setup()
    try:
        await web.TCPSite(api, config.host, config.port).start()
        await web.TCPSite(scrape, config.metrics_host, config.metrics_port).start()
        _warn_if_open(config)
        log.info("gateway on http://%s:%d (metrics on :%d/metrics), %d neuron(s), eviction %s",
                 config.host, config.port, config.metrics_port, len(config.neurons), config.strategy)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
    finally:
        await scrape.cleanup()
        await api.cleanup()


def _warn_if_open(config: GatewayConfig) -> None:
    has_keys = bool(config.auth.keys or config.auth.admin_keys)
    if has_keys:
        for path in files_readable_by_others(config):
            log.warning("%s holds keys and is readable by other users (mode %o); chmod 600 %s",
                        path, path.stat().st_mode & 0o777, path)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not has_keys:
        log.warning("listening on %s with no keys: anyone who can reach port %d can use every model and "
                    "load and unload them; set [auth] keys and admin_keys", config.host, config.port)


def run(config: GatewayConfig) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(config))
