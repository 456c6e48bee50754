"""What a load's `speculative` asks of the node, checked before anything is opened: a backend that verifies
drafts, and for a draft model, a GGUF on this disk whose memory counts in the load's estimate."""

from __future__ import annotations

from pathlib import Path

from neuron.server.catalog import estimate_mb, resolve
from neuron.shared.errors import ApiError
from neuron.shared.protocol import LoadRequest
from neuron.shared.speculative import DRAFT_MODEL_BACKENDS, SPECULATIVE_BACKENDS


def plan_speculative(req: LoadRequest, backend_name: str, models_dir: Path, roots: tuple[Path, ...],
                     on_cpu: bool) -> tuple[Path | None, float]:
    """(the draft model's file or None, the MiB it needs); a 400 for what cannot be served."""
    spec = req.speculative
    if spec is None:
        return None, 0.0
    if backend_name not in SPECULATIVE_BACKENDS:
        raise _refused(f"decoding with drafts is on the {' and '.join(SPECULATIVE_BACKENDS)} backends, not "
                       f"{backend_name}; load the GGUF of the model, or leave speculative out")
    if spec.method != "draft":
        return None, 0.0
    if backend_name not in DRAFT_MODEL_BACKENDS:
        raise _refused(f"a draft model runs beside the target on {', '.join(DRAFT_MODEL_BACKENDS)}, not "
                       f"{backend_name}; use method \"ngram\" here, or load the GGUF of the model")
    try:
        ref = resolve(spec.draft_model, models_dir, roots)
    except ApiError as err:
        raise _refused(f"draft_model: {err.message}") from None
    if ref.remote or ref.format != "gguf":
        raise _refused(f"draft_model {spec.draft_model!r} must be a GGUF on this node (pull it first); a "
                       "draft model runs beside the target on llama.cpp")
    return Path(ref.path), estimate_mb(ref, req.context_size, on_cpu, req.parallel)


def _refused(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", f"speculative: {message}", code="speculative_unsupported",
                    param="speculative")
