"""How many threads a model's llama.cpp steps use, chosen by measuring them, not assumed.

ggml's workers wait for each other at every operation of a step. When the machine has fewer free cores
than a step has threads (another process busy, the tokenisers and the HTTP server of the node itself),
a worker that lost its core holds all the others at the next barrier, and a step slows by ten times and
more: on two cores with one held by another process, 8 streams decoded at 19 tok/s with two threads and
at 184-217 tok/s with one. A fixed count is right only on a quiet machine, so each model's steps try the
counts of a short ladder (all the threads the context was given, then halves) in turn for a few steps,
keep the fastest for a while, and try again; a count that keeps winning is kept longer, up to HOLD_MAX
steps, so on a quiet machine the trials cost almost nothing. Pure: the batcher times its decodes and
asks `choice()` before each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRIAL_STEPS = 3  # steps per count in a trial, taken in turn so the counts see the same work
HOLD_MIN, HOLD_MAX = 64, 4096  # steps the winner is kept before the next trial: doubling while it wins


def ladder(threads: int, rungs: int = 3) -> tuple[int, ...]:
    """The counts tried: `threads`, then halves, at most `rungs` of them, none below 1."""
    counts = [threads]
    while len(counts) < rungs and counts[-1] > 1:
        counts.append(max(counts[-1] // 2, 1))
    return tuple(counts)


@dataclass
class ThreadTuner:
    """The thread count for a model's next step, from the throughput each count had in its last trial."""

    counts: tuple[int, ...]
    current: int = 0  # the count in use (set from `counts` at start)
    hold: int = HOLD_MIN
    left: int = 0  # steps before the next trial
    trial: list[int] = field(default_factory=list)  # the counts still to run in this trial, in order
    timed: dict[int, list[float]] = field(default_factory=dict)  # count -> [tokens, seconds] in this trial
    measured: dict[int, list[float]] = field(default_factory=dict)  # the same, of the last trial ended

    def __post_init__(self):
        self.current = self.current or self.counts[0]
        if len(self.counts) > 1:
            self._start_trial()

    def choice(self) -> int:
        """The count for the next step."""
        return self.trial[0] if self.trial else self.current

    def observe(self, threads: int, tokens: int, seconds: float) -> bool:
        """A step of `tokens` ran in `seconds` with `threads`; True when this ends a trial with a new count."""
        if len(self.counts) == 1 or tokens <= 0:
            return False
        if not self.trial:
            self.left -= 1
            if self.left <= 0:
                self._start_trial()
            return False
        if threads == self.trial[0]:
            figures = self.timed.setdefault(threads, [0.0, 0.0])
            figures[0] += tokens
            figures[1] += seconds
            self.trial.pop(0)
        return not self.trial and self._decide()

    def rate(self, threads: int) -> float:
        """Tokens a second `threads` had in the last trial ended (0 if it had none)."""
        tokens, seconds = self.measured.get(threads, (0.0, 0.0))
        return tokens / seconds if seconds > 0 else 0.0

    def _start_trial(self) -> None:
        self.timed = {}
        self.trial = [count for _ in range(TRIAL_STEPS) for count in self.counts]

    def _decide(self) -> bool:
        self.measured = self.timed
        best = max(self.counts, key=self.rate)
        changed = best != self.current
        self.hold = HOLD_MIN if changed else min(self.hold * 2, HOLD_MAX)
        self.current, self.left = best, self.hold
        return changed
