"""One error type for everything a client can cause, rendered as an OpenAI envelope.

Handlers raise `ApiError`; the middleware renders it. Errors are never classified
by matching message text: the type and code travel with the exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from aiohttp import web

log = logging.getLogger("cortex.shared.errors")


class ApiError(Exception):
    """An error with the HTTP status and OpenAI error fields it should be sent with."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        details: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.details = details or {}  # figures another dialect needs to word the error its own way

    def envelope(self) -> dict:
        # Clients read body.error.message, so `error` is always an object, never a bare string.
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param,
                          **self.details}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


def error_from_envelope(status: int, raw: bytes, retry_after: float | None = None) -> ApiError:
    """Read an OpenAI error envelope back into an ApiError (the inverse of `envelope`).

    A body that is not one becomes an `api_error` carrying its first 200 bytes, so nothing about
    the failure is lost. Busy answers (429, 503) keep a Retry-After, 5 s unless one is given.
    """
    if retry_after is None and status in (429, 503):
        retry_after = 5
    try:
        err = orjson.loads(raw)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        err = None
    if not isinstance(err, dict):
        return ApiError(status, "api_error", raw[:200].decode(errors="replace"), code="upstream_error",
                        retry_after=retry_after)
    details = {k: v for k, v in err.items() if k not in ("message", "type", "code", "param")}
    return ApiError(status, str(err.get("type") or "api_error"), str(err.get("message") or ""),
                    code=err.get("code"), param=err.get("param"), retry_after=retry_after, details=details)


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, "invalid_request_error", message, code=code, param=param)


def from_http_exception(exc: web.HTTPException, request: web.Request | None = None, server: str = "server") -> ApiError:
    """Turn aiohttp's own errors (unknown route, wrong method, body too large) into ApiErrors; the router's
    404 and 405 say which method and path, and what to do, since a client calling a route we do not serve
    (images.edit, audio.translations) otherwise reads a bare "Not Found"."""
    kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed"),
             413: ("invalid_request_error", "request_too_large")}
    type_, code = kinds.get(exc.status, ("invalid_request_error", "http_error"))
    message = exc.reason or "request rejected"
    if request is not None and isinstance(exc, web.HTTPMethodNotAllowed):
        message = (f"{request.method} is not allowed on {request.path[:200]}: "
                   f"use {' or '.join(sorted(exc.allowed_methods))}")
    elif request is not None and exc.status == 404 and message == "Not Found":
        lists = " (GET / lists the API routes it serves)" if server == "gateway" else ""
        message = f"{request.method} {request.path[:200]}: this {server} has no such route{lists}"
    return ApiError(exc.status, type_, message, code=code)


Renderer = Callable[[ApiError], web.Response]


def render_openai(err: ApiError) -> web.Response:
    return web.Response(body=orjson.dumps(err.envelope()), status=err.status, headers=err.headers(),
                        content_type="application/json")


def error_middleware(renderer_for: Callable[[str], Renderer], server: str):
    """Every failure leaves in the envelope of its route's dialect; unexpected ones are logged, not leaked.

    `renderer_for(path)` is given by each app factory, so a dialect is chosen by the app that
    serves it, never by a module global that another package changes.
    """
    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as err:
            return renderer_for(request.path)(err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return renderer_for(request.path)(from_http_exception(exc, request, server))
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            err = ApiError(500, "server_error", f"internal error; see the {server}'s log", code="internal_error")
            return renderer_for(request.path)(err)

    return middleware
