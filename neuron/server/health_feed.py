"""GET /health/stream: the node's health pushed to the gateways that watch it (neuron.shared.health_stream).

One feed per node computes the health answer every `check_s` while at least one stream is open, and
every stream waits on that one computation, so a node watched by three gateways works no harder than one
watched by one. A change is known by the answer's tag, as the conditional /health knows it (a hash of the
answer without its uptime), so a feed cannot miss what a poll would have seen; it sees it within `check_s`
instead of within the gateway's poll interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import orjson
from aiohttp import web

from neuron.shared import health_stream
from neuron.shared.change_feed import ChangeFeed
from neuron.shared.errors import bad_request
from neuron.shared.protocol import Health
from neuron.shared.sse import ClientStalled, open_stream

CHECK_S = 0.25  # how soon a change (a load's end, a queue's length) reaches the gateways that watch


class HealthFeed(ChangeFeed):
    """The latest health answer and its version, which moves whenever the answer's tag does."""

    def __init__(self, compute: Callable[[], tuple[Health, str]], check_s: float = CHECK_S):
        super().__init__(check_s)
        self.compute = compute  # the answer now and its tag (the uptime left out of the tag)
        self.tag, self.body = "", b""

    def refresh(self) -> bytes:
        """Compute the answer now and return its body, its uptime current; the version moves if its tag did."""
        health, tag = self.compute()
        body = orjson.dumps(health.to_dict())
        if tag != self.tag:
            self.tag, self.body, self.version = tag, body, self.version + 1
        return body

    def check(self) -> bool:
        """The feed's round: True if the tag moved. The body is serialised only then (a round on an idle
        node is a tag computed and compared)."""
        health, tag = self.compute()
        if tag == self.tag:
            return False
        self.tag, self.body, self.version = tag, orjson.dumps(health.to_dict()), self.version + 1
        return True


HEALTH_FEED = web.AppKey("health_feed", HealthFeed)


def heartbeat_of(request: web.Request) -> float:
    """The `heartbeat_s` query parameter: seconds between heartbeats while nothing changes."""
    raw = request.query.get(health_stream.HEARTBEAT_PARAM)
    if raw is None:
        return health_stream.DEFAULT_HEARTBEAT_S
    lo, hi = health_stream.MIN_HEARTBEAT_S, health_stream.MAX_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not lo <= value <= hi:
        raise bad_request(f"{health_stream.HEARTBEAT_PARAM}: expected seconds from {lo:g} to {hi:g}, got {raw!r}",
                          param=health_stream.HEARTBEAT_PARAM)
    return value


async def health_stream_route(request: web.Request) -> web.StreamResponse:
    return await stream_health(request, request.app[HEALTH_FEED])


async def stream_health(request: web.Request, feed: HealthFeed) -> web.StreamResponse:
    """The health event now, again on each change, a heartbeat while there is none; until either side stops."""
    heartbeat = heartbeat_of(request)
    resp = await open_stream(request)
    with contextlib.suppress(ConnectionResetError, ClientStalled):
        async with feed.watching():
            first = feed.refresh()  # not the feed's last body: its uptime may be old
            seen = feed.version
            await resp.write(health_stream.frame(first))
            while not feed.closed:
                if not await feed.next_change(seen, heartbeat):
                    await resp.write(health_stream.PING)
                elif not feed.closed:
                    seen = feed.version
                    await resp.write(health_stream.frame(feed.body))
    return resp
