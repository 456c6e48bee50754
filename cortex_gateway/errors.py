"""The gateway's errors: `neuron.errors.ApiError`, rendered in the dialect of the route.

Handlers raise ApiError; the middleware picks the envelope by path, so a
client of /v1/messages never sees an OpenAI-shaped error and vice versa.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from neuron.client import NeuronError
from neuron.errors import ApiError, from_http_exception, render_openai

log = logging.getLogger(__name__)

# Path prefix -> renderer; the Anthropic routes register theirs.
RENDERERS: dict[str, Callable[[ApiError], web.Response]] = {}


def unknown_model(model: str) -> ApiError:
    return ApiError(404, "not_found_error", f"model {model!r} does not exist in this fleet; "
                    "GET /v1/models lists the models", code="model_not_found", param="model")


def no_capacity(message: str, retry_after: float = 5) -> ApiError:
    return ApiError(503, "overloaded_error", message, code="no_capacity", retry_after=retry_after)


def upstream_error(err: NeuronError) -> ApiError:
    if err.unreachable:
        return ApiError(502, "api_error", f"the node serving this model is unreachable: {err.message}",
                        code="upstream_unreachable")
    retry = 5 if err.status in (429, 503) else None
    return ApiError(err.status, err.type, err.message, code=err.code, retry_after=retry)


def render(path: str, err: ApiError) -> web.Response:
    for prefix, renderer in RENDERERS.items():
        if path.startswith(prefix):
            return renderer(err)
    return render_openai(err)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as err:
        return render(request.path, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(request.path, from_http_exception(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request.path, ApiError(500, "api_error", "internal error; see the gateway's log",
                                             code="internal_error"))
