"""The gateway's last API requests, for the console's activity view (`/admin/status` `requests`).

What the access log writes, kept in memory too (the access log middleware tells `record` each request as
it logs it): time, method, path, status, duration, and the request's record (key name, model, node,
tokens, time to first token). Bounded (the newest hundred), this gateway's only (each gateway of a shared
fleet keeps its own), never a body or a key: the same fields as the log line.
"""

from __future__ import annotations

import collections
import time

from aiohttp import web

KEEP = 100
RECENT_REQUESTS = web.AppKey("recent_requests", collections.deque)


def install(app: web.Application, keep: int = KEEP) -> None:
    app[RECENT_REQUESTS] = collections.deque(maxlen=keep)


def record(request: web.Request, status: int, seconds: float, details: dict) -> None:
    """One request as the access log ends it; API requests (`/v1/...`) only."""
    if request.path.startswith("/v1/"):
        request.config_dict[RECENT_REQUESTS].append({
            "time": time.time(), "method": request.method, "path": request.path, "status": status,
            "duration_s": round(seconds, 4), **details})


def recent(config, limit: int = 50) -> list[dict]:
    """The newest `limit` requests, oldest first (`config`: the app, or a request's config_dict)."""
    return list(config[RECENT_REQUESTS])[-limit:]
