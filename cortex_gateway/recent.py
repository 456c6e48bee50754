"""Rolling per-model figures for the operator (`cortex top`): last minute, last hundred requests.

Prometheus histograms answer these over any window but need a Prometheus;
the dashboard must work against a bare gateway.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass


@dataclass
class _Sample:
    at: float
    ttft: float | None
    tps: float | None
    ok: bool


class RecentStats:
    def __init__(self, keep: int = 200):
        self.samples: dict[str, collections.deque[_Sample]] = collections.defaultdict(
            lambda: collections.deque(maxlen=keep))

    def record(self, model: str, ttft: float | None, tps: float | None, ok: bool) -> None:
        self.samples[model].append(_Sample(time.time(), ttft, tps, ok))

    def summary(self, model: str) -> dict:
        samples = list(self.samples.get(model, ()))
        now = time.time()
        ttfts = [s.ttft for s in samples[-100:] if s.ttft is not None]
        rates = [s.tps for s in samples[-20:] if s.tps is not None]
        return {
            "requests_per_min": sum(1 for s in samples if s.at > now - 60),
            "errors_per_min": sum(1 for s in samples if s.at > now - 60 and not s.ok),
            "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        }

    def all(self) -> dict[str, dict]:
        return {model: self.summary(model) for model in self.samples}
