"""Cold loads that cannot succeed on retry: which failures they are, and remembering them per node.

A neuron says why a load failed with a typed code. Some failures pass by themselves (memory is freed, a
load in progress ends, the hub answers again); others stay until someone changes the node: its files, its
flags, its configuration. Answered with a retryable 503, those made agents retry for minutes (Claude Code:
11 times in 3.5 minutes) a load the node could only refuse again. So the gateway answers them with a
non-retryable error in the client's dialect, and does not ask that node to load that model again until
the node changes: its model listing differs, it restarted (its flags or roots may be new), or
`FORGET_AFTER_S` passed (for a change no listing shows: a file put under a --model-root, a link replaced
by a copy). An admin load always asks the node, and a load that succeeds clears the memory.

Everything here is pure: the decisions take the node's listing, uptime and the time as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass

from neuron.shared.errors import ApiError
from neuron.shared.protocol import AvailableModel

# Codes of load failures that the same request to the same, unchanged node meets again. Classified by
# code, never by message; a code not listed (a new one, or one that may pass: insufficient_memory,
# model_busy, model_loading, engine_failed, engine_timeout, hub_offline, pull_failed) keeps the
# retryable answer.
PERMANENT_CODES = frozenset({
    "model_not_found",  # no such model, path or hub repository for this node
    "model_outside_roots",  # a symlink whose target is outside the node's models dir and roots
    "load_failed",  # the backend could not read the model: not a model, corrupt, unsupported architecture
    "backend_unavailable", "engine_unavailable",  # not installed on the node
    "backend_format_mismatch", "engine_flag_refused",  # the profile's backend or engine_args
    "unknown_device", "pulls_disabled", "gated_repo", "revision_not_found", "ambiguous_source",
})
FORGET_AFTER_S = 300.0


def is_permanent(err: ApiError) -> bool:
    """A failure that retrying will not change: a listed code on a 4xx (a 5xx is a side that failed)."""
    return err.code in PERMANENT_CODES and 400 <= err.status < 500


def catalog_version(available: Mapping[str, AvailableModel]) -> int:
    """A value that changes when a model is added to, removed from or replaced in a node's listing."""
    return hash(tuple(sorted(astuple(m) for m in available.values())))


@dataclass(frozen=True)
class Failure:
    error: ApiError
    version: int  # catalog_version of the node when it failed
    uptime_s: float  # the node's uptime then: less later means it restarted
    at: float  # time.monotonic() when it failed


def still_failing(failure: Failure | None, version: int, uptime_s: float, now: float) -> bool:
    """Whether a load that failed permanently would fail again on the node as it is now."""
    return (failure is not None and failure.version == version and uptime_s >= failure.uptime_s
            and now - failure.at < FORGET_AFTER_S)


def gives_up(candidates: Iterable[str], failed: Mapping[str, ApiError]) -> bool:
    """Answer with the permanent failure when every node that could load the model has one; while any
    other candidate is left (full now, say), a retry can succeed and the answer stays a 503."""
    candidates = set(candidates)
    return bool(candidates) and candidates <= failed.keys()


class LoadFailures:
    """The permanent load failures the gateway has met, by (node, model). Only models the fleet knows
    reach a cold load, so this holds at most one entry per node and model in the catalog."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], Failure] = {}

    def record(self, node: str, model: str, err: ApiError, version: int, uptime_s: float, *, now: float) -> None:
        self._failures[(node, model)] = Failure(err, version, uptime_s, now)

    def blocking(self, node: str, model: str, version: int, uptime_s: float, *, now: float) -> ApiError | None:
        """The error a load of `model` on `node` would meet again; None (and forgotten) once the node changed."""
        failure = self._failures.get((node, model))
        if still_failing(failure, version, uptime_s, now):
            return failure.error
        self._failures.pop((node, model), None)
        return None

    def clear(self, node: str, model: str) -> None:
        self._failures.pop((node, model), None)


def cannot_load(model: str, failed: Mapping[str, ApiError]) -> ApiError:
    """The client's answer: non-retryable (4xx, no Retry-After), with each node's reason and its fix.

    A 404 stays a 404 (the model's files are not there); others are a 422, since the client's request
    is fine and a 401, 403, 408, 409 or 429 would send it to check its key or retry."""
    first = failed[min(failed)]
    reasons = "; ".join(f"on {node}: {err.message}" for node, err in sorted(failed.items()))
    return ApiError(404 if first.status == 404 else 422, "invalid_request_error",
                    f"model {model!r} cannot be loaded ({reasons}). Retrying will not help: the gateway asks "
                    "again once the node's models change or it restarts", code=first.code, param="model")
