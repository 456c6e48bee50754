"""GET /admin/status/stream: /admin/status as server-sent events, the web console's live fleet view.

One feed per gateway builds the status every CHECK_S while a stream is open (never while none is), and
every open stream sends that one body when it changed: three consoles cost the gateway what one does. A
stream gets the status at once, then each change, and a comment every HEARTBEAT_S while nothing changes
(so a proxy or the browser keeps the connection). The browser's EventSource cannot send an Authorization
header, so the console reads the stream with fetch; it is behind the admin key as the rest of /admin is.
When the gateway stops, every stream ends (on_shutdown), so the shutdown does not wait on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from neuron.shared.change_feed import ChangeFeed
from neuron.shared.sse import KEEPALIVE, ClientStalled, open_stream

CHECK_S = 1.0  # how soon a change reaches the consoles: a poll of the fleet's state, not of the nodes
HEARTBEAT_S = 15.0


class StatusFeed(ChangeFeed):
    """The latest status body; its version moves when a check finds the body changed."""

    def __init__(self, compute: Callable[[], Awaitable[dict]], check_s: float = CHECK_S):
        super().__init__(check_s)
        self.compute = compute
        self.body = b""

    async def check(self) -> bool:
        body = orjson.dumps(await self.compute())
        if body == self.body:
            return False
        self.body, self.version = body, self.version + 1
        return True


STATUS_FEED = web.AppKey("status_feed", StatusFeed)


def frame(body: bytes) -> bytes:
    return b"event: status\ndata: " + body + b"\n\n"


def install(app: web.Application, compute: Callable[[web.Application], Awaitable[dict]]) -> None:
    """The gateway's feed, over `compute(app)` (admin_routes' status body); its streams end at shutdown."""
    feed = app[STATUS_FEED] = StatusFeed(lambda: compute(app))
    app.on_shutdown.append(feed.close)


async def stream_status(request: web.Request) -> web.StreamResponse:
    """The status now, again on each change, a heartbeat while there is none; until either side stops."""
    feed = request.config_dict[STATUS_FEED]
    resp = await open_stream(request)
    with contextlib.suppress(ConnectionResetError, ClientStalled):
        async with feed.watching():
            await feed.check_now()  # a status of now, not what the feed last saw (up to CHECK_S old)
            seen = feed.version
            await resp.write(frame(feed.body))
            while not feed.closed:
                if not await feed.next_change(seen, HEARTBEAT_S):
                    await resp.write(KEEPALIVE)
                elif not feed.closed:
                    seen = feed.version
                    await resp.write(frame(feed.body))
    return resp
