"""The gateway's last API requests, for the console's activity view (`/admin/status` `requests`).

What the access log writes, kept in memory too: time, method, path, status, duration, and the request's
record (key name, model, node, tokens, time to first token). Bounded (the newest hundred), this gateway's
only (each gateway of a shared fleet keeps its own), never a body or a key: the same fields as the log line.
"""

from __future__ import annotations

import asyncio
import collections
import time

from aiohttp import web

from neuron.shared.request_context import CLIENT_CLOSED

KEEP = 100
RECENT_REQUESTS = web.AppKey("recent_requests", collections.deque)


def recent_requests_middleware(details):
    """A middleware (inside the access log, outside the error middleware, so refusals keep their status)
    recording each `/v1/` request as it ends into `app[RECENT_REQUESTS]` (made by `install`)."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        if not request.path.startswith("/v1/"):
            return await handler(request)
        started, status = time.perf_counter(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            entry = {"time": time.time(), "method": request.method, "path": request.path, "status": status,
                     "duration_s": round(time.perf_counter() - started, 4), **details(request)}
            request.config_dict[RECENT_REQUESTS].append(entry)

    return middleware


def install(app: web.Application, keep: int = KEEP) -> None:
    app[RECENT_REQUESTS] = collections.deque(maxlen=keep)


def recent(request: web.Request, limit: int = 50) -> list[dict]:
    """The newest `limit` requests, oldest first."""
    return list(request.config_dict[RECENT_REQUESTS])[-limit:]
