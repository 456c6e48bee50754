"""Bounds on connections, shared by the neuron and the gateway: how long, how many, how many at all;
and the wait for the signal that ends both.

Found by probing: aiohttp keeps a connection that sends nothing, or sends its
headers a byte a second, for an hour (its default keep-alive timeout), and
300 such sockets used up a 256-descriptor limit. So:
- `idle_timeout_s` closes a connection that has no request in progress for that
  long: one that never sends a request, one between requests, and one still
  trickling in its request head (aiohttp counts a half-sent head as idle);
- at most `per_client` connections per client address: the rest are closed at
  once, before any byte is read;
- the descriptor limit is raised to the hard limit at start-up.

Also a free loopback port, for the child servers both sides start (the embedded
neuron, an engine).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import signal
import socket

from aiohttp import web

log = logging.getLogger("cortex.shared.connections")


def free_port() -> int:
    """A port nothing listens on now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _OneLineParserErrors(logging.Filter):
    """aiohttp logs a malformed request with an 11-line traceback and the offending bytes, which can be
    a client's API key; keep one line that names the kind of error and nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            kind = record.exc_info[1].__class__.__name__
            record.msg, record.args, record.exc_info, record.exc_text = (
                "malformed HTTP request refused (%s)", (kind,), None, None)
        return True


def quiet_parser_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _OneLineParserErrors) for f in server_log.filters):
        server_log.addFilter(_OneLineParserErrors())


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT; both servers then stop accepting and drain (bounded)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class _CappedProtocol(asyncio.Protocol):
    """Counts a client's connections; over the cap it closes the new one before aiohttp sees it."""

    def __init__(self, inner: asyncio.Protocol, counts: collections.Counter, per_client: int):
        self.inner, self.counts, self.per_client = inner, counts, per_client
        self.client: str | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.counts[self.client] += 1
        if self.counts[self.client] > self.per_client:
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts[self.client] -= 1
        if self.counts[self.client] <= 0:
            del self.counts[self.client]
        if self.admitted:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are capped per client (aiohttp's TCPSite has no such hook)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, per_client: int):
        super().__init__(runner)
        self._host, self._port, self._per_client = host, port, per_client
        self._counts: collections.Counter = collections.Counter()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _CappedProtocol(server(), self._counts, self._per_client), self._host, self._port,
            reuse_address=True)
