"""What a step costs by its size, and so how long a draft may be before it slows the batch down.

A draft of k tokens makes the step it is verified in k tokens larger; it pays only if the tokens it is
expected to bring (1 + p + p^2 ... p^k, with p the chance each drafted token is kept) are worth more
than the time the larger step costs every sequence in it. What a step costs is measured: the seconds of
recent steps are fitted as a + b * tokens (a the fixed cost of a step: reading the weights, launching
kernels; b the cost of each token in it). On a GPU a is nearly all of it and a draft is nearly free; on
a small CPU b is large and only a draft that is almost always right pays. Only decoding steps are fitted
(a prompt's chunk is another regime, and the first one after a load also pages the weights in: one such
3-second step once made every draft look unpaid for the rest of the answer), and a step that took far
longer than the fit says (the process descheduled on a busy machine) counts as OUTLIER times the fit.
Pure: the batcher tells it each step's size and time, and asks `best_length` for each sequence's draft.
"""

from __future__ import annotations

from dataclasses import dataclass

DECAY = 0.97  # weight of a step's figures one step later: the fit follows the last ~30 steps
OUTLIER = 3.0  # a step slower than this many times the fit's figure counts as this many
SETTLED = 8.0  # the weight of steps seen before slow ones are held to OUTLIER


def expected_tokens(p: float, k: int) -> float:
    """Tokens a step yields for a sequence with a draft of k, each kept with chance p in turn."""
    return float(k + 1) if p >= 1.0 else (1.0 - p ** (k + 1)) / (1.0 - p)


@dataclass
class StepCost:
    """An exponentially weighted least-squares fit of step seconds against step tokens."""

    s0: float = 0.0
    sn: float = 0.0
    snn: float = 0.0
    st: float = 0.0
    snt: float = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        fitted = self.fit() if self.s0 >= SETTLED else None
        if fitted is not None:
            seconds = min(seconds, OUTLIER * (fitted[0] + fitted[1] * tokens))
        d = DECAY
        self.s0, self.sn, self.snn = self.s0 * d + 1, self.sn * d + tokens, self.snn * d + tokens * tokens
        self.st, self.snt = self.st * d + seconds, self.snt * d + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b): seconds a step costs, and each token in it; None before any step."""
        if self.s0 <= 0:
            return None
        mean_n, mean_t = self.sn / self.s0, self.st / self.s0
        spread = self.snn / self.s0 - mean_n * mean_n
        if spread < 0.25:  # steps all of one size (a lone stream that has not drafted): half and half
            return mean_t / 2, mean_t / (2 * mean_n)
        b = max((self.snt / self.s0 - mean_n * mean_t) / spread, 0.0)
        return max(mean_t - b * mean_n, 0.0), b

    def best_length(self, p: float, limit: int, tokens: int, others: int) -> int:
        """The draft length (0: none) that yields the most tokens a second for a step of `tokens` tokens
        without this draft, in which `others` other sequences each get one token."""
        fitted = self.fit()
        if fitted is None or limit <= 0:
            return limit
        a, b = fitted

        def rate(k: int) -> float:
            return (others + expected_tokens(p, k)) / (a + b * (tokens + k))

        return max(range(limit + 1), key=lambda k: (rate(k), -k))

    def best_padded_length(self, chances: list[tuple[float, int]], rows: int, limit: int) -> int:
        """The one draft length for a padded batch (torch's), where each of `rows` rows computes as many
        positions as the longest draft plus one: the rows with drafts, as (chance each token is kept, its
        draft's length), bring what they are expected to, the others a token each. A lone row's draft was
        already cut to what pays (`best_length`), and is kept as it is, explorations included."""
        fitted = self.fit()
        if fitted is None or limit <= 0 or rows <= 1:
            return limit
        a, b = fitted
        plain = rows - len(chances)

        def rate(k: int) -> float:
            return (plain + sum(expected_tokens(p, min(k, n)) for p, n in chances)) / (a + b * rows * (k + 1))

        return max(range(limit + 1), key=lambda k: (rate(k), -k))
