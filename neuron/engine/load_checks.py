"""Whether a load request may be answered by the copy of its model already loaded.

A request names a model; when that model is loaded, the loaded copy answers it
only if it is what the request asked for. Anything else would silently serve
another backend or another context than the caller configured (a gateway
profile naming the file of a model already loaded under its own name got the
loaded copy's 8192 tokens instead of its 65536).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuron.shared.errors import ApiError

if TYPE_CHECKING:
    from neuron.engine.registry import ModelEntry
    from neuron.shared.protocol import LoadRequest


def check_same_backend(existing: ModelEntry, req: LoadRequest) -> None:
    if req.backend not in ("auto", existing.backend_name):
        raise ApiError(409, "invalid_request_error", f"model {existing.id!r} is loaded with {existing.backend_name}; "
                       f"unload it first to load it with {req.backend}", code="backend_mismatch", param="backend")


def check_same_context(existing: ModelEntry, req: LoadRequest) -> None:
    """A load that asks for another context than the loaded copy has would silently get the loaded one (a
    profile naming the file of a model already loaded under its own name): refused, saying what to do."""
    # What the loaded copy was asked for (a backend may clamp it, and asking again for that is the same load),
    # else what it got by default.
    have = existing.request.context_size or existing.info().context_size
    if req.context_size is not None and have and req.context_size != have:
        raise ApiError(409, "invalid_request_error", f"model {existing.id!r} is loaded with a context of {have} "
                       f"tokens; unload it first to load it with {req.context_size}", code="context_mismatch",
                       param="context_size")
