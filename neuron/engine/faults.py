"""Fault injection, off by default, so tests can drive the recovery paths for real.

Enabled only when the neuron starts with CORTEX_FAULT_INJECTION=1; then
`POST /debug/faults {"model", "fault", "count", "after_tokens"}` arms a fault:
- `device_error`: the next inference on the model raises a device fault after
  `after_tokens` tokens (the model is poisoned and recovered);
- `load_error`: the next load of the model fails halfway, after the weights are in memory;
- `slow`: each token of the next `count` inferences takes `delay_ms` longer (a slow or
  stuck device), so tests can hold requests in flight without racing the clock;
- `slow_load`: the next load of the model takes `delay_ms` longer (a big model from a slow disk);
- `slow_prefill`: each prefill step of the next `count` inferences takes `delay_ms` longer (a long
  prompt on a CPU), so tests can leave or repeat a request while its prompt is being computed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

FAULT_KINDS = ("device_error", "load_error", "slow", "slow_load", "slow_prefill")
ENV_SWITCH = "CORTEX_FAULT_INJECTION"


def injection_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").lower() in ("1", "true", "yes")


@dataclass
class _Armed:
    count: int
    after_tokens: int
    delay_ms: int = 0


class FaultInjector:
    """Armed faults by (model, kind); read from the device threads, so guarded by a lock."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._armed: dict[tuple[str, str], _Armed] = {}
        self._lock = threading.Lock()

    def arm(self, model: str, kind: str, count: int = 1, after_tokens: int = 0, delay_ms: int = 0) -> None:
        with self._lock:
            self._armed[(model, kind)] = _Armed(count, after_tokens, delay_ms)

    def take(self, model: str, kind: str) -> _Armed | None:
        """Consume one armed fault, or None when none is armed."""
        if not self.enabled:
            return None
        with self._lock:
            armed = self._armed.get((model, kind))
            if armed is None or armed.count <= 0:
                return None
            armed.count -= 1
            return armed

    def for_batch(self, model: str) -> dict:
        """The faults armed for one batched inference, as the batcher applies them per token."""
        out = {}
        if (slow := self.take(model, "slow")) is not None:
            out["delay_s"] = slow.delay_ms / 1000
        if (slow := self.take(model, "slow_prefill")) is not None:
            out["prefill_delay_s"] = slow.delay_ms / 1000
        if (fault := self.take(model, "device_error")) is not None:
            out["fail_after"] = fault.after_tokens
        return out
