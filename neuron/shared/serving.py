"""Serving until a signal, for both servers: uvloop when installed, the apps on their ports, then on
SIGTERM or SIGINT stop accepting, let in-flight requests finish (at most the grace), clean up, return.

A port that cannot be listened on is a `StartupError` naming the address, so the command prints
one line; anything else that goes wrong keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from neuron.shared.config_fields import StartupError
from neuron.shared.connections import GuardedSite, quiet_parser_errors, raise_descriptor_limit, wait_for_stop_signal


class ServingLimits(Protocol):
    """What both configs (NeuronConfig, GatewayConfig) say about serving: the bounds every port gets."""

    shutdown_grace_s: float
    idle_timeout_s: float
    max_connections_per_client: int


@dataclass(frozen=True)
class Listener:
    """One app on one address."""

    app: web.Application
    host: str
    port: int


def run_until_signal(serve: Callable[[], Awaitable[None]]) -> None:
    """Run `serve()` (which calls `serve_until_signal`) on uvloop if it is installed, else asyncio's loop."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve())


async def serve_until_signal(listeners: list[Listener], limits: ServingLimits, log: logging.Logger,
                             on_serving: Callable[[], None]) -> None:
    """Serve every listener until SIGTERM/SIGINT, then drain (bounded by the grace) and clean up.
    `on_serving` runs once all ports listen (the line that says the server is up); `log` is the server's own."""
    raise_descriptor_limit()
    quiet_parser_errors()
    runners: list[web.AppRunner] = []
    try:
        for listener in listeners:
            # handler_cancellation: a client that leaves cancels its work (its upstream request, its generation)
            runner = web.AppRunner(listener.app, access_log=None, handle_signals=False, handler_cancellation=True,
                                   shutdown_timeout=limits.shutdown_grace_s, keepalive_timeout=limits.idle_timeout_s)
            await runner.setup()
            runners.append(runner)
            await _listen(runner, listener, limits.max_connections_per_client)
        on_serving()
        await wait_for_stop_signal()
        log.info("stopping: finishing in-flight requests")
    finally:
        for runner in reversed(runners):  # the last opened first: the API, which drains, goes last
            await runner.cleanup()


async def _listen(runner: web.AppRunner, listener: Listener, per_client: int) -> None:
    try:
        await GuardedSite(runner, listener.host, listener.port, per_client=per_client).start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {listener.host}:{listener.port}: {exc.strerror or exc}") from exc
