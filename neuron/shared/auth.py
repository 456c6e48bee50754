"""The neuron's optional shared token: with one set, a neuron port reached directly is not an open door.

The gateway sends it as `Authorization: Bearer TOKEN`; /health stays open so
that load balancers and the gateway's own liveness check need no secret.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from neuron.shared.errors import ApiError

TOKEN = web.AppKey("neuron_token", str)
OPEN_PATHS = frozenset({"/health"})


def presented_key(request: web.Request) -> str | None:
    """The key a client sent, as `Authorization: Bearer KEY` or `x-api-key: KEY` (the gateway's too)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def key_matches(key: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key that `key` equals, compared in constant time against all of them, so
    timing says nothing about which key or how much of one matched."""
    if key is None:
        return None
    found = None
    # aiohttp hands header bytes that are not UTF-8 over as surrogates: compare them, never crash.
    encoded = key.encode("utf-8", "surrogateescape")
    for candidate in keys:
        if hmac.compare_digest(encoded, candidate.encode()):
            found = candidate
    return found


@web.middleware
async def token_auth(request: web.Request, handler):
    expected = request.app[TOKEN]
    if expected and request.path not in OPEN_PATHS and key_matches(presented_key(request), (expected,)) is None:
        raise ApiError(401, "authentication_error", "this neuron needs its token: send Authorization: Bearer "
                       "TOKEN (the gateway's [[neurons]] token)", code="invalid_token")
    return await handler(request)
