"""The HTTP edge both servers share: the one JSON body reader, JSON answers, and body bounds.

The body is read once, in `body_limits`, under a deadline; handlers then get
aiohttp's cached copy through `read_json`. A declared Content-Length over the
limit is refused before a byte is read; a body that turns out longer is cut
off at the limit by aiohttp. JSON nesting is bounded by orjson (1024 levels),
whose refusal becomes a 400.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from neuron.errors import ApiError, bad_request

# Keys plus array items a body may hold. A million tiny keys in 12 MB cost a parser about 135 MB of
# objects, and the allocator keeps much of it afterwards; real requests, a long conversation with
# tools included, hold a few tens of thousands.
MAX_JSON_ELEMENTS = 200_000


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or the 400 that says what is wrong with it."""
    if not body:
        raise bad_request("request body: expected JSON, got an empty body", code="invalid_json")
    # An upper bound on elements, counted at C speed before a single object is built.
    if len(body) > MAX_JSON_ELEMENTS and body.count(b",") + body.count(b":") > MAX_JSON_ELEMENTS:
        raise ApiError(413, "invalid_request_error", f"request body holds more than {MAX_JSON_ELEMENTS} JSON "
                       "keys and array items; send a smaller request", code="request_too_large")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None


async def read_json(request: web.Request) -> Any:
    return parse_json(await request.read())


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


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
