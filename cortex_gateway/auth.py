"""Auth settings, admin keys and per-key limits (the API key check itself: `key_auth`).

The admin API needs an admin key (or, with no admin keys configured, a config-file API key), compared
in constant time against every one, so timing says nothing about which key or how much of one matched;
the state database's keys are never admin keys. Limits are per key, from the key's settings (a
config-file key has [auth]'s): requests per minute (a token bucket) and requests in flight; beyond
either, 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from aiohttp import web

from cortex_gateway.state_db import ApiKey
from neuron.shared.auth import key_matches, presented_key
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
    rpm: int | None = None  # the limit the tokens were counted for
    in_flight: int = 0


@dataclass
class KeyLimiter:
    """Requests per minute and in flight, per key, from the key's own settings at each request (so a
    PATCH applies to the next one); None: no limit."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def acquire(self, key: ApiKey) -> None:
        rpm, most = key.settings.rpm, key.settings.max_concurrent
        now = time.monotonic()
        bucket = self.buckets.get(key.key_hash)
        if bucket is None:
            bucket = self.buckets[key.key_hash] = _Bucket(float(rpm or 0), now, rpm)
        if bucket.rpm != rpm:  # a PATCH: a new limit starts full, a lower one keeps no more than it allows
            bucket.tokens = min(bucket.tokens, float(rpm or 0)) if bucket.rpm else float(rpm or 0)
            bucket.rpm = rpm
        if most and bucket.in_flight >= most:
            raise ApiError(429, "rate_limit_error", f"this key already has {bucket.in_flight} requests in flight "
                           f"(limit {most}); retry when one finishes", code="concurrency_limit", retry_after=1)
        if rpm:
            rate = rpm / 60.0
            bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                raise ApiError(429, "rate_limit_error", f"this key is limited to {rpm} requests per minute",
                               code="rate_limit", retry_after=(1.0 - bucket.tokens) / rate)
            bucket.tokens -= 1.0
        bucket.in_flight += 1

    def release(self, key: ApiKey) -> None:
        self.buckets[key.key_hash].in_flight -= 1


LIMITER = web.AppKey("key_limiter", KeyLimiter)


@web.middleware
async def admin_auth(request: web.Request, handler):
    settings = request.config_dict[AUTH]
    keys = settings.admin_keys or settings.keys
    if keys and key_matches(presented_key(request), keys) is None:
        raise ApiError(401, "authentication_error", "the admin API needs an admin key: send "
                       "Authorization: Bearer KEY (cortex takes it from --admin-key or CORTEX_ADMIN_KEY)",
                       code="invalid_admin_key")
    return await handler(request)
