"""The API key check: which key a request comes with, and what it carries from here on.

Keys come from the config file and the keys file, and from the state database (made at run time through
/admin/keys). A presented key is hashed (sha256) and looked up in memory (`key_cache`): a known key costs
no database call and no await, and a lookup by hash says nothing, by its timing, about how much of a key
matched. With a key anywhere every route but /health and /admin needs one (the admin API has its own
check, `auth.admin_auth`). The request then carries the key's record (`state.TENANT`: a config-file key
as an ApiKey with the [auth] limits), its name (`KEY_NAME`, for logs and the neuron's queue) and its
priority (`state.PRIORITY`), and its rpm and in-flight limits apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from aiohttp import web

from cortex_gateway.auth import KEY_NAME, LIMITER, AuthSettings
from cortex_gateway.console_routes import is_console_path
from cortex_gateway.key_cache import KEYS, KeyCache
from cortex_gateway.state import PRIORITY, STATE_DB, TENANT
from cortex_gateway.state_db import ApiKey, KeySettings, StateError, hash_key
from neuron.shared.auth import OPEN_PATHS, presented_key
from neuron.shared.errors import ApiError

log = logging.getLogger("cortex.gateway.auth")


def config_tenants(settings: AuthSettings) -> dict[str, ApiKey]:
    """The config file's and keys file's keys as the records the layers after auth read, by hash: each
    with the [auth] limits, and normal priority."""
    limits = KeySettings(rpm=settings.requests_per_minute or None, max_concurrent=settings.max_concurrent or None)
    return {hash_key(key): ApiKey(settings.name_of(key), hash_key(key), limits, 0.0, 0.0) for key in settings.keys}


def presented_hash(key: str) -> str:
    """The sha256 of a presented key, as `hash_key`; header bytes that are not UTF-8 (aiohttp hands them
    over as surrogates) hash too, and match nothing, rather than crash."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


async def tenant_of(request: web.Request) -> ApiKey:
    """The active key the request presents, from memory (the database only for a hash not known); 401
    for none, 503 if the database cannot say."""
    presented = presented_key(request)
    key_hash = None if presented is None else presented_hash(presented)
    cache = request.app[KEYS]
    tenant = None if key_hash is None else cache.cached(key_hash)
    if tenant is None and key_hash is not None:
        try:
            tenant = await cache.lookup(key_hash)
        except StateError as exc:
            raise ApiError(503, "api_error", f"cannot check the key: {exc}; retry shortly", code="state_unavailable",
                           retry_after=5) from None
    if tenant is None:
        raise ApiError(401, "authentication_error", "a valid API key is required: send it as "
                       "Authorization: Bearer KEY or x-api-key: KEY", code="invalid_api_key")
    return tenant


@web.middleware
async def api_auth(request: web.Request, handler):
    """With a key anywhere (the config, the keys file, the state database), every route but /health and the
    console's files (which hold no data) needs one; the request carries its key (TENANT), name (KEY_NAME)
    and priority (PRIORITY) from here on."""
    if not request.app[KEYS].keyed or request.path in OPEN_PATHS or request.path.startswith("/admin") \
            or is_console_path(request.path):
        return await handler(request)
    tenant = await tenant_of(request)
    request[KEY_NAME], request[TENANT], request[PRIORITY] = tenant.name, tenant, tenant.settings.priority
    limiter = request.app[LIMITER]
    limiter.acquire(tenant)
    try:
        return await handler(request)
    finally:
        limiter.release(tenant)


def keys_ctx(settings: AuthSettings):
    """The app's cleanup_ctx entry, after the state database's: the key cache filled, then kept fresh."""
    async def ctx(app: web.Application):
        cache = app[KEYS] = KeyCache(app.get(STATE_DB), config_tenants(settings))
        await cache.refresh()
        if cache.keyed and not cache.static:
            log.info("%d active key(s) in the state database: every API request needs a key", len(cache.known))
            if not (settings.admin_keys or settings.keys):
                log.warning("keys are in the state database but [auth] admin_keys is not set: the admin API "
                            "(which makes keys) is open to anyone who can reach it; set [auth] admin_keys")
        task = asyncio.create_task(cache.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
