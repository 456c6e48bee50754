"""The stream of a request that must wait (for a slot, or for an engine's first answer), opened only then.

The neuron's response headers are its verdict on a request: the gateway commits nothing to its
own client until they arrive, so a refusal (a prompt too long for the context, a bad schema) is a
real HTTP status in every dialect, the 400 Claude Code compacts on included. The in-process
backends check everything before a request queues; only a request that then waits longer than a
keep-alive interval gets its stream opened early, with keep-alives, so a client with stall
detection keeps waiting. An error after that point can only be an error event.
"""

from __future__ import annotations

from aiohttp import web

from neuron.shared.errors import ApiError
from neuron.shared.sse import DONE, KEEPALIVE, error_event, open_stream


class WaitingStream:
    """Opened at the first keep-alive it sends; `resp` is None until then."""

    def __init__(self, request: web.Request, headers: dict[str, str] | None = None):
        self.request = request
        self.headers = headers or {}
        self.resp: web.StreamResponse | None = None

    async def keepalive(self) -> None:
        if self.resp is None:
            self.resp = await open_stream(self.request, self.headers)
        await self.resp.write(KEEPALIVE)

    async def fail(self, err: ApiError) -> web.StreamResponse:
        """End the opened stream with `err`, or raise it as a status when nothing was sent yet."""
        if self.resp is None:
            raise err
        await self.resp.write(error_event(err) + DONE)
        return self.resp
