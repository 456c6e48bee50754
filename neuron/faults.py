"""Fault injection, off by default, so tests can drive the recovery paths for real.

Enabled only when the neuron starts with CORTEX_FAULT_INJECTION=1; then
`POST /debug/faults {"model", "fault", "count", "after_tokens"}` arms a fault:
- `device_error`: the next inference on the model raises a device fault after
  `after_tokens` tokens (the model is poisoned and recovered);
- `load_error`: the next load of the model fails halfway, after the weights are in memory.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from neuron.generation import DeviceFault

FAULT_KINDS = ("device_error", "load_error")
ENV_SWITCH = "CORTEX_FAULT_INJECTION"


def injection_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").lower() in ("1", "true", "yes")


@dataclass
class _Armed:
    count: int
    after_tokens: int


class FaultInjector:
    """Armed faults by (model, kind); read from the device threads, so guarded by a lock."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._armed: dict[tuple[str, str], _Armed] = {}
        self._lock = threading.Lock()

    def arm(self, model: str, kind: str, count: int = 1, after_tokens: int = 0) -> None:
        with self._lock:
            self._armed[(model, kind)] = _Armed(count, after_tokens)

    def take(self, model: str, kind: str) -> int | None:
        """Consume one armed fault; returns its `after_tokens`, or None when none is armed."""
        if not self.enabled:
            return None
        with self._lock:
            armed = self._armed.get((model, kind))
            if armed is None or armed.count <= 0:
                return None
            armed.count -= 1
            return armed.after_tokens


def fail_after(tokens, after: int):
    """Wrap a token iterator so it raises a device fault after `after` tokens."""
    for i, token in enumerate(tokens):
        if i >= after:
            raise DeviceFault("injected device fault (CORTEX_FAULT_INJECTION)")
        yield token
    raise DeviceFault("injected device fault (CORTEX_FAULT_INJECTION)")
