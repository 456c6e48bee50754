"""Bounds on what a client can make a server read: body size and the time to send it.

Shared by the neuron and the gateway. The body is read here, once, under a
deadline; handlers get aiohttp's cached copy. A declared Content-Length over
the limit is refused before a byte is read; a body that turns out longer is cut
off at the limit by aiohttp. JSON nesting is bounded by orjson (1024 levels),
whose refusal the handlers turn into a 400.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from neuron.errors import ApiError


def body_limits(max_bytes: int, read_timeout_s: float):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.body_exists:
            declared = request.content_length
            if declared is not None and declared > max_bytes:
                raise ApiError(413, "invalid_request_error", f"request body of {declared} bytes is over the "
                               f"limit of {max_bytes} bytes", code="request_too_large")
            if request.content.is_eof():
                return await handler(request)  # already all here: no deadline needed
            try:
                async with asyncio.timeout(read_timeout_s):  # no task per request, unlike wait_for
                    await request.read()
            except TimeoutError:
                raise ApiError(408, "invalid_request_error", f"the request body did not arrive within "
                               f"{read_timeout_s:g}s", code="request_timeout") from None
        return await handler(request)

    return middleware
