"""The admin API's keys: `/admin/keys` to make, list, read, change and revoke keys at run time.

A key is made here (`state_db.new_secret`), stored as its sha256 only, and shown once, in the 201
answer to POST; nothing else ever holds it (no answer, no log line: the access log writes the path and
the status, never a body). Every change is applied to this gateway's key cache before the answer goes,
so a PATCH or a revocation holds for the very next request. Mounted on the admin sub-app, behind its key.
"""

from __future__ import annotations

import logging

from aiohttp import web

from cortex_gateway.auth import AUTH
from cortex_gateway.key_cache import KEYS
from cortex_gateway.key_settings import conflict, create_body, unknown_key, update_body
from cortex_gateway.state import STATE_DB
from cortex_gateway.state_db import (
    DuplicateKeyName,
    InvalidKeySetting,
    KeyNotFound,
    KeySettings,
    StateDB,
    StateError,
    hash_key,
    new_secret,
)
from neuron.shared.errors import ApiError, bad_request
from neuron.shared.http import json_response, read_json

log = logging.getLogger("cortex.gateway.keys")


def _db(request: web.Request) -> StateDB:
    return request.config_dict[STATE_DB]


async def create(request: web.Request) -> web.Response:
    auth = request.config_dict[AUTH]
    if not (auth.admin_keys or auth.keys):
        # Keys made through an admin API anyone can reach protect nothing: whoever reaches it could make their
        # own, lift their limits or revoke everyone else's. The one gateway the rule stops is the unkeyed one.
        raise ApiError(409, "invalid_request_error", "this gateway has no admin key, so its admin API is open to "
                       "anyone who can reach it and keys made through it would protect nothing: set [auth] "
                       "admin_keys (or start cortex serve with --admin-key / CORTEX_ADMIN_KEY), then make keys",
                       code="admin_key_required")
    name, settings = create_body(await read_json(request))
    secret = new_secret()
    with _answerable():
        key = await _db(request).create_key(name, hash_key(secret), KeySettings(**settings))
    request.config_dict[KEYS].put(key)
    log.info("key %s made", key.name)
    return json_response({"name": key.name, "key": secret, **key.public()}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """The active keys (`?revoked=1`: the revoked too), names and settings, never a key or a hash."""
    with _answerable():
        keys = await _db(request).list_keys(include_revoked=bool(request.query.get("revoked")))
    return json_response({"keys": [k.public() for k in keys]})


async def get(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    with _answerable():
        key = await _db(request).get_key(name)
    if key is None:
        raise unknown_key(name)
    return json_response(key.public())


async def update(request: web.Request) -> web.Response:
    name, changes = request.match_info["name"], update_body(await read_json(request))
    with _answerable():
        key = await _db(request).update_key(name, changes)
    request.config_dict[KEYS].put(key)
    log.info("key %s changed: %s", key.name, ", ".join(sorted(changes)))
    return json_response(key.public())


async def revoke(request: web.Request) -> web.Response:
    """Revoke: refused from the next request on (streams already running finish); the name stays taken."""
    name = request.match_info["name"]
    with _answerable():
        key = await _db(request).revoke_key(name)
    request.config_dict[KEYS].revoke(key)
    log.info("key %s revoked", key.name)
    return json_response(key.public())


class _answerable:
    """The state layer's errors as the admin API's answers: 400 naming the field, 404, 409, 503."""

    def __enter__(self):
        return self

    def __exit__(self, _type, exc, _tb):
        if isinstance(exc, InvalidKeySetting):
            raise bad_request(str(exc), param=exc.field) from None
        if isinstance(exc, DuplicateKeyName):
            raise conflict(str(exc)) from None
        if isinstance(exc, KeyNotFound):
            raise unknown_key(exc.name) from None
        if isinstance(exc, StateError):
            raise ApiError(503, "api_error", f"the state database cannot be reached: {exc}; retry shortly",
                           code="state_unavailable", retry_after=5) from None
        return False


def add_routes(admin: web.Application) -> None:
    """On the admin sub-app (so under /admin, behind its key)."""
    admin.router.add_post("/keys", create)
    admin.router.add_get("/keys", list_keys)
    admin.router.add_get("/keys/{name}", get)
    admin.router.add_patch("/keys/{name}", update)
    admin.router.add_delete("/keys/{name}", revoke)
