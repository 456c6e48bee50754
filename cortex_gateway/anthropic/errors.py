"""Errors in the Anthropic envelope: `{"type": "error", "error": {"type", "message"}}`."""

from __future__ import annotations

import orjson
from aiohttp import web

from neuron.shared.errors import ApiError

# The key of `ApiError.details` that holds Anthropic's own `error.details` object (the SDK reads
# `error_code` there, e.g. to fall back from threads).
ANTHROPIC_DETAILS = "anthropic_details"
_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
              429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
_KNOWN = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
          "request_too_large", "rate_limit_error", "api_error", "overloaded_error"}


def anthropic_type(err: ApiError) -> str:
    """The Anthropic error type for a status (our OpenAI-side types are not all Anthropic ones)."""
    if err.type in _KNOWN and _BY_STATUS.get(err.status, err.type) == err.type:
        return err.type
    return _BY_STATUS.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")


def envelope(err: ApiError) -> dict:
    error = {"type": anthropic_type(err), "message": anthropic_message(err)}
    if ANTHROPIC_DETAILS in err.details:
        error["details"] = err.details[ANTHROPIC_DETAILS]
    return {"type": "error", "error": error}


def anthropic_message(err: ApiError) -> str:
    """Anthropic's own wording where clients key on it: Claude Code compacts its context on
    "prompt is too long: N tokens > M maximum"."""
    tokens, maximum = err.details.get("tokens"), err.details.get("maximum")
    if err.code == "context_length_exceeded" and isinstance(tokens, int) and isinstance(maximum, int):
        return f"prompt is too long: {tokens} tokens > {maximum} maximum"
    return err.message


def render_anthropic(err: ApiError) -> web.Response:
    return web.Response(body=orjson.dumps(envelope(err)), status=err.status, headers=err.headers(),
                        content_type="application/json")


def error_event(err: ApiError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(envelope(err)) + b"\n\n"
