"""The neuron's optional shared token: with one set, a neuron port reached directly is not an open door.

The gateway sends it as `Authorization: Bearer TOKEN`; /health stays open so
that load balancers and the gateway's own liveness check need no secret.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from neuron.errors import ApiError

TOKEN = web.AppKey("neuron_token", str)
OPEN_PATHS = frozenset({"/health"})


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


@web.middleware
async def token_auth(request: web.Request, handler):
    expected = request.app[TOKEN]
    if expected and request.path not in OPEN_PATHS and not token_matches(bearer(request), expected):
        raise ApiError(401, "authentication_error", "this neuron needs its token: send Authorization: Bearer "
                       "TOKEN (the gateway's [[neurons]] token)", code="invalid_token")
    return await handler(request)
