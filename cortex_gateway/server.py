"""Running the gateway: the API and the metrics port, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from cortex_gateway.app import create_app, create_metrics_app
from cortex_gateway.config import GatewayConfig, files_readable_by_others
from cortex_gateway.embedded import local_neuron
from cortex_gateway.metrics import GatewayMetrics
from neuron.shared.config import is_loopback
from neuron.shared.serving import Listener, run_until_signal, serve_until_signal

log = logging.getLogger("cortex.gateway")


def run(config: GatewayConfig) -> None:
    """Serve until a signal (with the embedded default's local neuron running around it)."""
    with local_neuron(config):
        run_until_signal(lambda: serve(config))


async def serve(config: GatewayConfig) -> None:
    """Serve until a signal; then stop accepting, let requests finish (at most shutdown_grace_s), and return."""
    metrics = GatewayMetrics()
    listeners = [Listener(create_app(config, metrics=metrics), config.host, config.port),
                 Listener(create_metrics_app(metrics), config.metrics_host, config.metrics_port)]
    await serve_until_signal(listeners, config, log, lambda: _serving(config))


def _serving(config: GatewayConfig) -> None:
    _warn_if_open(config)
    log.info("gateway on http://%s:%d (metrics on :%d/metrics), %d neuron(s), eviction %s",
             config.host, config.port, config.metrics_port, len(config.neurons), config.strategy)


def _warn_if_open(config: GatewayConfig) -> None:
    if config.auth.keys or config.auth.admin_keys:
        for path in files_readable_by_others(config):
            log.warning("%s holds keys and is readable by other users (mode %o); chmod 600 %s",
                        path, path.stat().st_mode & 0o777, path)
    if not is_loopback(config.host) and not config.auth.keys:
        # Admin keys alone protect /admin, not /v1: say so, or an operator believes the API is closed.
        also = "" if config.auth.admin_keys else " and load and unload them"
        log.warning("listening on %s with no user keys in the config: unless the state database holds keys, "
                    "anyone who can reach port %d can use every model%s; set [auth] keys, or admin_keys and "
                    "make keys with `cortex keys create`", config.host, config.port, also)
    if not is_loopback(config.metrics_host):
        log.warning("metrics on %s:%d are unauthenticated: firewall that port to your Prometheus",
                    config.metrics_host, config.metrics_port)
