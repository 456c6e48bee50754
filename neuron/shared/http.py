"""The HTTP edge both servers share: the one JSON body reader, JSON answers, and body bounds.

The body is read once, in `body_limits`, under a deadline; handlers then get
aiohttp's cached copy through `read_json`. A declared Content-Length over the
limit is refused before a byte is read; a body that turns out longer is cut
off at the limit by aiohttp. JSON nesting is bounded here, for every route of
both servers, to `MAX_JSON_DEPTH` levels: legal JSON 500 levels deep (orjson
reads up to 1024) made the deep copies and walks behind a route (a tool's
schema, a response_format, chat_template_kwargs) hit Python's recursion limit,
a 500 with a traceback. A large body is followed by a heap trim (neuron.shared.heap),
so a burst of them does not leave a server at its peak.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from neuron.shared.errors import ApiError, bad_request
from neuron.shared.heap import HeapTrimmer

# Keys plus array items a body may hold. A million tiny keys in 12 MB cost a parser about 135 MB of
# objects, and the allocator keeps much of it afterwards; real requests, a long conversation with
# tools included, hold a few tens of thousands.
MAX_JSON_ELEMENTS = 200_000
# Objects and arrays inside one another, the body itself counting as one. Real JSON schemas nest a few
# levels (each level of a schema is two here: the schema and its "properties"); 64 leaves room for
# the deepest in use and stays far from the recursion limit of whatever walks the value.
MAX_JSON_DEPTH = 64


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or the 400 that says what is wrong with it."""
    if not body:
        raise bad_request("request body: expected JSON, got an empty body", code="invalid_json")
    # An upper bound on elements, counted at C speed before a single object is built.
    if len(body) > MAX_JSON_ELEMENTS and body.count(b",") + body.count(b":") > MAX_JSON_ELEMENTS:
        raise ApiError(413, "invalid_request_error", f"request body holds more than {MAX_JSON_ELEMENTS} JSON "
                       "keys and array items; send a smaller request", code="request_too_large")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH:  # fewer openers cannot nest deeper
        check_depth(value)
    return value


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse a value nested deeper than `limit`, naming the top-level field it is in (no recursion here)."""
    stack = [(value, 1, None)]
    while stack:
        node, depth, field = stack.pop()
        if depth > limit:
            where = f"{field}: " if field else "request body: "
            raise bad_request(f"{where}objects and arrays nest more than {limit} levels deep (the limit, "
                              "counting the request body as one level); flatten the value", param=field,
                              code="json_too_deep")
        top = depth == 1 and isinstance(node, dict)  # the fields of the body name where the nesting is
        for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, key if top else field))


async def read_json(request: web.Request) -> Any:
    return parse_json(await request.read())


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def body_limits(max_bytes: int, read_timeout_s: float):
    trimmer = HeapTrimmer()  # large bodies leave the allocator at its peak: the memory goes back after them

    @web.middleware
    async def middleware(request: web.Request, handler):
        if not request.body_exists:
            return await handler(request)
        try:
            return await _read_then_handle(request, handler, max_bytes, read_timeout_s)
        finally:
            trimmer.after_body(request.content.total_bytes)  # what arrived, declared or chunked

    return middleware


async def _read_then_handle(request: web.Request, handler, max_bytes: int, read_timeout_s: float):
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
