"""The gateway's errors: `neuron.shared.errors.ApiError`, rendered in the dialect of the route.

Handlers raise ApiError; the middleware that `create_app` builds picks the
envelope by path, so a client of /v1/messages never sees an OpenAI-shaped
error and vice versa.
"""

from __future__ import annotations

from cortex_gateway.anthropic.errors import render_anthropic
from neuron.shared.errors import ApiError, Renderer, render_openai

# Path prefix -> envelope; everything else is OpenAI's.
DIALECT_RENDERERS: tuple[tuple[str, Renderer], ...] = (("/v1/messages", render_anthropic),)


def renderer_for(path: str) -> Renderer:
    for prefix, renderer in DIALECT_RENDERERS:
        if path.startswith(prefix):
            return renderer
    return render_openai


def unknown_model(model: str) -> ApiError:
    """OpenAI's type for an unknown model is invalid_request_error (the Anthropic envelope says not_found_error)."""
    return ApiError(404, "invalid_request_error", f"model {model!r} does not exist in this fleet; "
                    "GET /v1/models lists the models", code="model_not_found", param="model")


def no_capacity(message: str, retry_after: float = 5) -> ApiError:
    return ApiError(503, "overloaded_error", message, code="no_capacity", retry_after=retry_after)


def model_too_large(model: str, too_big) -> ApiError:
    """A model no node can ever hold (`router.TooBig`): refused at once, not retryable, with the figures, so
    the client does not wait for room that cannot come (Ollama's evict/reload livelock, #18282)."""
    return ApiError(422, "invalid_request_error",
                    f"model {model!r} needs {too_big.need_mb:.0f} MiB, more than any node can hold: the roomiest, "
                    f"{too_big.node}, has {too_big.capacity_mb:.0f} MiB in all. Pick a "
                    "smaller model (or quantisation), or add a node with more memory", code="model_too_large",
                    param="model")
