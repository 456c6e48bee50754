"""Token-by-token generation shared by both backends.

llama-cpp-python's own streaming re-detokenises the whole output at every
token, which makes streaming quadratic. Here each token's bytes are decoded
once, through an incremental UTF-8 decoder, and stop sequences are matched on
a small held-back tail: the cost per token is constant.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from neuron.engine.logprobs import TokenLogprob, chat_entry
from neuron.server.openai_schema import SamplingParams


class DeviceFault(RuntimeError):
    """The device failed during inference; the model must be reloaded before it is trusted."""


@dataclass
class Delta:
    """Text produced since the last delta, and the end of generation when it came."""

    text: str
    finish_reason: str | None = None
    stop_sequence: str | None = None  # which stop sequence ended the text, if one did
    logprobs: list[dict] | None = None  # OpenAI chat logprob entries of the tokens behind `text`


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not recomputed
    first_token_at: float | None = None
    finished_at: float | None = None
    draft_tokens: int = 0  # speculative decoding: tokens drafted and verified
    draft_accepted: int = 0  # of those, kept
    prediction_accepted: int = 0  # of the request's prediction's drafts, kept (accepted_prediction_tokens)
    prediction_rejected: int = 0  # and not (rejected_prediction_tokens)
    predicted: bool = False  # the request came with a prediction: its usage says what became of it

    def drafted(self, drafter) -> None:
        """A speculating sequence's figures, at its end (neuron.engine.drafts.Drafter)."""
        self.draft_tokens, self.draft_accepted = drafter.proposed, drafter.accepted
        self.prediction_accepted, self.prediction_rejected = drafter.predicted_accepted, drafter.predicted_rejected


class StopMatcher:
    """Finds stop sequences in streamed text, holding back only a possible partial match."""

    def __init__(self, stops: list[str], include: bool = False):
        self.stops = [s for s in stops if s]
        self.include = include  # the text keeps the stop sequence (vLLM's include_stop_str_in_output)
        self.hold = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            out, self.pending = self.pending[:cut + (len(self.matched) if self.include else 0)], ""
            return out, True
        keep = self._partial_suffix_len()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _partial_suffix_len(self) -> int:
        tail = self.pending[-self.hold:]
        for n in range(min(len(tail), self.hold - 1), 0, -1):
            suffix = tail[-n:]
            if any(s.startswith(suffix) for s in self.stops):
                return n
        return 0


class Detokenizer(Protocol):
    """Turns tokens into text one at a time, holding back partial characters."""

    def step(self, token: int) -> str: ...

    def flush(self) -> str: ...


class ByteDetokenizer:
    """For backends that give each token's raw bytes (llama.cpp)."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self.token_bytes = token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token: int) -> str:
        return self.decoder.decode(self.token_bytes(token))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def hold_end(logits: np.ndarray, end_ids: np.ndarray) -> None:
    """min_tokens, in place: the end tokens get no chance while the answer is shorter, unless nothing else
    is allowed (a grammar that must end there ends the answer)."""
    kept = logits[end_ids].copy()
    logits[end_ids] = -np.inf
    if not np.isfinite(logits).any():
        logits[end_ids] = kept


class TextAssembler:
    """One generation's tokens pushed in one at a time, text deltas out: detokenising, stop
    sequences, the end token and the length limit. The batch scheduler feeds it one token per step.

    vLLM's extensions as vLLM reads them: with `ignore_eos` an end token is one more token of text
    (control tokens are text only without skip_special_tokens); stop sequences are looked for only
    once `min_tokens` are out (the samplers hold the end tokens back until then)."""

    def __init__(self, detok: Detokenizer, is_end: Callable[[int], bool], params: SamplingParams, max_new: int,
                 stats: GenerationStats, clock: Callable[[], float], piece: Callable[[int], bytes] | None = None):
        self.detok, self.is_end, self.max_new, self.stats, self.clock = detok, is_end, max_new, stats, clock
        self.ignore_eos, self.min_tokens = params.ignore_eos, params.min_tokens
        self.stopper = StopMatcher(params.stop, params.include_stop)
        self.finish_reason = "length"
        self.matched_stop = False
        self.piece = piece  # a token's bytes, for logprob entries; None when the request asked for none
        self.logprobs: list[dict] = []  # entries of tokens whose text is still held back

    def feed(self, token: int, logprob: TokenLogprob | None = None) -> tuple[Delta | None, bool]:
        """(text to emit or None, whether generation is over). The end token is not counted."""
        if self.stats.first_token_at is None:
            self.stats.first_token_at = self.clock()
        if self.is_end(token) and not self.ignore_eos:
            self.finish_reason = "stop"
            return None, True
        self.stats.completion_tokens += 1
        if logprob is not None and self.piece is not None:
            self.logprobs.append(chat_entry(logprob, self.piece))
        text = self.detok.step(token)
        if self.stats.completion_tokens >= self.min_tokens:
            text, self.matched_stop = self.stopper.feed(text)
        if self.matched_stop:
            self.finish_reason = "stop"
        done = self.matched_stop or self.stats.completion_tokens >= self.max_new
        return (self._delta(text) if text else None), done

    def _delta(self, text: str, finish: str | None = None, stop: str | None = None) -> Delta:
        entries, self.logprobs = self.logprobs, []
        return Delta(text, finish, stop, entries if self.piece is not None else None)

    def finish(self) -> list[Delta]:
        """What is held back, then the final delta with the finish reason."""
        out = []
        if not self.matched_stop:
            tail = self.stopper.flush() + self.detok.flush()
            if tail:
                out.append(self._delta(tail))
        self.stats.finished_at = self.clock()
        out.append(self._delta("", self.finish_reason, self.stopper.matched))
        return out

