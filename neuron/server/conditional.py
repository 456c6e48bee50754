"""Conditional answers for the lifecycle API's polled routes: an ETag on each, a 304 when it still holds.

The gateway polls every node every few seconds; on an idle node nothing changes between two polls, so
the answer it already holds is good. The tag is a hash of the answer itself (not a counter kept beside
the state), so it cannot miss a change: whatever would change the body changes the tag. /health
carries two figures that move on every call on an idle node too: its uptime is left out of its tag
(the gateway advances the uptime it holds by the time passed, and the node's start instant is hashed
in instead, so a restarted node never matches), and the rest (free memory, load) is in it.
"""

from __future__ import annotations

import hashlib

import orjson
from aiohttp import web

ETAG = "ETag"
IF_NONE_MATCH = "If-None-Match"


def tag_of(body: bytes) -> str:
    """A strong ETag (quoted, as HTTP spells one) for an answer's bytes."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def matches(request: web.Request, tag: str) -> bool:
    """The request holds `tag` already (If-None-Match, one tag or a list of them, or `*`)."""
    held = request.headers.get(IF_NONE_MATCH)
    if not held:
        return False
    return held.strip() == "*" or tag in (t.strip().removeprefix("W/") for t in held.split(","))


def answer(request: web.Request, body: bytes, tag: str) -> web.Response:
    """The JSON `body` with its tag, or a bodiless 304 when the request holds that tag already."""
    if matches(request, tag):
        return web.Response(status=304, headers={ETAG: tag})
    return web.Response(body=body, headers={ETAG: tag}, content_type="application/json")


def json_answer(request: web.Request, payload: dict) -> web.Response:
    """`payload` as JSON, tagged by its own bytes."""
    body = orjson.dumps(payload)
    return answer(request, body, tag_of(body))
