"""API keys, admin keys and per-key limits.

Keys are compared in constant time against every configured key, so timing
says nothing about which key or how much of one matched. With keys set, every
route but /health needs one; the admin API needs an admin key (or, with no
admin keys configured, an API key), so a keyed gateway never has an open admin
API. Limits are per key: requests per minute (a token bucket) and requests in
flight; beyond either, 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from aiohttp import web

from neuron.shared.auth import OPEN_PATHS, key_matches, presented_key
from neuron.shared.errors import ApiError


@dataclass(frozen=True)
class AuthSettings:
    keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    requests_per_minute: int = 0  # per key; 0: no limit
    max_concurrent: int = 0  # per key; 0: no limit
    names: dict[str, str] = field(default_factory=dict, hash=False)  # key -> its name (a keys-file comment)

    def name_of(self, key: str) -> str:
        """What logs show for a key: its name, else a short digest; never the key or a part of it."""
        return self.names.get(key) or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


AUTH = web.AppKey("auth", AuthSettings)
KEY_NAME = web.RequestKey("key_name", str)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


@dataclass
class KeyLimiter:
    """Requests per minute and in flight, per key."""

    settings: AuthSettings
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def acquire(self, key: str) -> None:
        s = self.settings
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(float(s.requests_per_minute), now)
        if s.max_concurrent and bucket.in_flight >= s.max_concurrent:
            raise ApiError(429, "rate_limit_error", f"this key already has {bucket.in_flight} requests in flight "
                           f"(limit {s.max_concurrent}); retry when one finishes", code="concurrency_limit",
                           retry_after=1)
        if s.requests_per_minute:
            rate = s.requests_per_minute / 60.0
            bucket.tokens = min(float(s.requests_per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                raise ApiError(429, "rate_limit_error", f"this key is limited to {s.requests_per_minute} "
                               "requests per minute", code="rate_limit", retry_after=(1.0 - bucket.tokens) / rate)
            bucket.tokens -= 1.0
        bucket.in_flight += 1

    def release(self, key: str) -> None:
        self.buckets[key].in_flight -= 1


LIMITER = web.AppKey("key_limiter", KeyLimiter)


@web.middleware
async def api_auth(request: web.Request, handler):
    settings = request.app[AUTH]
    if not settings.keys or request.path in OPEN_PATHS or request.path.startswith("/admin"):
        return await handler(request)
    key = key_matches(presented_key(request), settings.keys)
    if key is None:
        raise ApiError(401, "authentication_error", "a valid API key is required: send it as "
                       "Authorization: Bearer KEY or x-api-key: KEY", code="invalid_api_key")
    request[KEY_NAME] = settings.name_of(key)
    limiter = request.app[LIMITER]
    limiter.acquire(key)
    try:
        return await handler(request)
    finally:
        limiter.release(key)


@web.middleware
async def admin_auth(request: web.Request, handler):
    settings = request.config_dict[AUTH]
    keys = settings.admin_keys or settings.keys
    if keys and key_matches(presented_key(request), keys) is None:
        raise ApiError(401, "authentication_error", "the admin API needs an admin key: send "
                       "Authorization: Bearer KEY (cortex takes it from --admin-key or CORTEX_ADMIN_KEY)",
                       code="invalid_admin_key")
    return await handler(request)
