"""`GET /admin/usage[?key=NAME]`: each key's tokens, per model and window, and what is left of its budget.

What `cortex usage` shows. Read from the state database, so it is the same on every gateway sharing
one, and survives restarts: `usage` holds a row per key, model and period (settled tokens as the answers
reported them, requests, and the tokens reserved by requests in flight); `keys` a row per key with its
budget, the current period of its window, when that rolls, and what is left.
"""

from __future__ import annotations

from aiohttp import web

from cortex_gateway import budgets
from cortex_gateway.auth import admin_auth
from cortex_gateway.metering import METER, window_of
from cortex_gateway.state import STATE_DB
from cortex_gateway.state_db import ApiKey, StateError, UsageRow
from cortex_gateway.tpm import rfc3339, state_of
from neuron.shared.errors import ApiError
from neuron.shared.http import json_response


def usage_row(row: UsageRow, current: set[tuple[str, str]]) -> dict:
    return {"key": row.key, "model": row.model, "period": row.window, "current": (row.key, row.window) in current,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "total_tokens": row.total_tokens, "requests": row.requests, "reserved_tokens": row.reserved_tokens}


def key_row(name: str, key: ApiKey | None, period: budgets.Period, used: tuple[int, int], tpm: dict | None) -> dict:
    """One key's budget now: `budget_left` is the budget less what is settled and reserved (null: no budget)."""
    settled, reserved = used
    budget = key.settings.budget_tokens if key is not None else None
    return {"key": name, "revoked": key is not None and not key.active,
            "budget_tokens": budget, "budget_window": key.settings.budget_window if key is not None else None,
            "period": period.label, "rolls_at": rfc3339(period.rolls_at), "settled_tokens": settled,
            "reserved_tokens": reserved, "budget_left": None if budget is None else max(0, budget - settled - reserved),
            "tpm": tpm}


async def usage(request: web.Request) -> web.Response:
    name = request.query.get("key") or None
    db = request.config_dict[STATE_DB]
    try:
        rows = await db.usage(name)
        keys = {k.name: k for k in await db.list_keys(include_revoked=True)}
        if name is not None and not rows and name not in keys:
            raise ApiError(404, "not_found_error", f"no key named {name!r} and no usage under that name; "
                           "cortex keys list shows the keys", code="key_not_found", param="key")
        names = sorted({r.key for r in rows} | ({name} if name else set(keys)))
        out_keys, current = [], set()
        for key_name in names:
            key = keys.get(key_name)
            period = window_of(key).period(request.config_dict[METER].clock())
            current.add((key_name, period.label))
            used = await db.budget_used(key_name, period.label)
            out_keys.append(key_row(key_name, key, period, used, await _tpm(db, key)))
    except StateError as exc:
        raise ApiError(503, "api_error", f"cannot read usage: {exc}", code="state_unavailable", retry_after=5) from None
    return json_response({"keys": out_keys, "usage": [usage_row(r, current) for r in rows]})


async def _tpm(db, key: ApiKey | None) -> dict | None:
    """The key's tokens per minute now, as every gateway sharing the database sees them; None without a limit."""
    if key is None or not key.settings.tpm:
        return None
    state = state_of(key.settings.tpm, await db.tpm_level(key.name, key.settings.tpm))
    return {"limit": state.limit, "remaining": state.remaining, "reset_s": round(state.reset_s, 3)}


async def _admin_usage(request: web.Request) -> web.StreamResponse:
    return await admin_auth(request, usage)  # the admin key check of the /admin sub-app, on this route too


def add_routes(app: web.Application) -> None:
    """/admin/usage on the app itself (an exact route is resolved before the /admin sub-app's prefix)."""
    app.router.add_get("/admin/usage", _admin_usage)
