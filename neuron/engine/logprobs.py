"""Log-probabilities of the tokens a generation picked, and of the likeliest alternatives.

Computed on the device thread from the step's raw logits (before any grammar
mask, as OpenAI reports the model's own distribution), only for requests that
asked. Shaped into OpenAI's chat form here; `neuron.shared.sse.completion_logprobs` derives the
legacy completions form from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the `n` likeliest tokens of the step, best first


def logprob_of(logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """log-softmax at `token` and the top `top_n` entries of one step's logits (float32, vocab-sized)."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    top: list[tuple[int, float]] = []
    if top_n:
        best = np.argpartition(-logits, top_n - 1)[:top_n]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = [(int(t), float(logits[t]) - log_total) for t in best]
    return TokenLogprob(token, float(logits[token]) - log_total, top)


def chat_entry(lp: TokenLogprob, piece: Callable[[int], bytes]) -> dict:
    """One entry of `choices[].logprobs.content` in OpenAI's chat shape."""
    return {**_token(lp.token, lp.logprob, piece),
            "top_logprobs": [_token(t, p, piece) for t, p in lp.top]}


def _token(token: int, logprob: float, piece: Callable[[int], bytes]) -> dict:
    raw = piece(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}
