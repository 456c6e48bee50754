"""Token budgets, decided: the window a request counts in, the most it can cost, and when to come back.

Pure: every function takes the time it decides at (seconds since the epoch) or the figures it weighs;
`cortex_gateway.metering` does the reserving and settling around them.

Windows are fixed periods, never sliding ones. `1h`, `1d`, `30d` (any `<n>s|m|h|d`) are periods of that
length counted from the epoch (UTC), and `month` is the calendar month in UTC. A fixed period is one row
of the state database's `budget_totals`, so a reservation is checked against it by one conditional
UPDATE (exact under any concurrency, from any number of gateways), and the moment it rolls is known, so
a refusal says exactly when to retry. A sliding window would need every request's time and a sum over
them at each admission. The cost: a key may spend its budget at the end of one period and again at the
start of the next.

A request's worst case is what it may cost if the model writes to its limit. The neuron refuses a
prompt that does not fit the model's context and clamps each answer to the room the prompt leaves, so a
request never costs more than its prompt plus, per choice, the smaller of `max_tokens` and that room.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from neuron.shared.audio_bound import POSITIONS_PER_S, WINDOW_S

MONTH = "month"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SPEC = re.compile(r"([1-9][0-9]{0,6})([smhd])")
# The fields that bound an answer's length, in the neurons' (OpenAI) dialect; Anthropic's max_tokens and the
# Responses API's max_output_tokens arrive translated into these.
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True)
class Period:
    """One period of a window: its label in the state database, and when it started and rolls."""

    label: str
    start: float
    rolls_at: float

    def retry_after(self, now: float) -> float:
        """Seconds until the next period starts empty (at least 1: a Retry-After of 0 means nothing)."""
        return max(1.0, self.rolls_at - now)


@dataclass(frozen=True)
class Window:
    """A budget window as a key names it: `month`, or `seconds` long, from the epoch."""

    spec: str
    seconds: int = 0  # 0: the calendar month

    def period(self, now: float) -> Period:
        if self.seconds == 0:
            return _month(now)
        start = now // self.seconds * self.seconds
        return Period(self._label(start), float(start), float(start + self.seconds))

    def _label(self, start: float) -> str:
        """The day for `1d`, the hour for `1h` (what an operator reads in `cortex usage`); other windows
        carry their spec, so that a key whose window changes starts a period of its own."""
        if self.spec == "1d":
            return time.strftime("%Y-%m-%d", time.gmtime(start))
        if self.spec == "1h":
            return time.strftime("%Y-%m-%dT%H", time.gmtime(start))
        return f"{self.spec}@" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start))


def parse_window(spec: str) -> Window:
    """`1h`, `1d`, `30d`, `month`, or any `<n>s|m|h|d`; a ValueError saying what is accepted otherwise."""
    if spec == MONTH:
        return Window(MONTH)
    found = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if found is None:
        raise ValueError(f"budget_window: expected 1h, 1d, 30d, month or another <number><s|m|h|d>, got {spec!r}")
    return Window(spec, int(found[1]) * _UNITS[found[2]])


def _month(now: float) -> Period:
    year, month = time.gmtime(now)[:2]
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    following = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
    return Period(f"{year:04d}-{month:02d}", float(start), float(following))


def output_limit(body: dict) -> int | None:
    """The answer's length limit the request set (per choice), or None when it set none."""
    for name in OUTPUT_FIELDS:
        value = body.get(name)
        if type(value) is int and value >= 0:
            return value
    return None


def choices(body: dict) -> int:
    n = body.get("n")
    return n if type(n) is int and n > 1 else 1


def worst_case(context: int, prompt_tokens: int | None, limit: int | None, n: int = 1) -> int | None:
    """The most one prompt may cost: its tokens (None: not counted) plus, for each of `n` choices, the smaller
    of `limit` (None: none set) and the room the prompt leaves in `context` (0: unknown). None: no bound."""
    if prompt_tokens is not None:
        room = context - prompt_tokens if context else None
        per_choice = limit if room is None else room if limit is None else min(limit, room)
        return None if per_choice is None else prompt_tokens + n * max(0, per_choice)
    if not context:
        return None
    # The prompt not counted: P + n * min(limit, context - P) is largest at P = context - limit.
    return context + (n - 1) * min(limit if limit is not None else context, context)


def chat_worst_case(body: dict, context: int, prompt_tokens: int | None) -> int | None:
    """A chat request (chat completions, and the messages and responses translated to it)."""
    return worst_case(context, prompt_tokens, output_limit(body), choices(body))


def prompts_worst_case(prompts: object, context: int, limit: int | None, n: int = 1) -> int | None:
    """Completions' `prompt` or embeddings' `input`: a string or a list of token ids, or a list of either. A
    list of token ids is counted as it is; a string is bounded by the context. None: some prompt has no bound."""
    items = prompts if isinstance(prompts, list) and prompts and not _is_token_list(prompts) else [prompts]
    total = 0
    for item in items:
        cost = worst_case(context, len(item) if _is_token_list(item) else None, limit, n)
        if cost is None:
            return None
        total += cost
    return total


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int for v in value)


def request_worst_case(endpoint: str, body: dict, context: int, prompt_tokens: int | None = None) -> int | None:
    """The worst case of a request by its endpoint label (`cortex_gateway.metrics.ENDPOINTS`); an
    embedding writes nothing, so costs its inputs only."""
    if endpoint == "embeddings":
        return prompts_worst_case(body.get("input", ""), context, 0)
    if endpoint == "rerank":  # each document is read with the query: at most a context each, writing nothing
        documents = body.get("documents")
        return prompts_worst_case(documents if isinstance(documents, list) and documents else "", context, 0)
    if endpoint == "transcriptions":
        return transcription_worst_case(body.get("audio_s"), context)
    if endpoint == "images":  # the prompt is read once for all n images (at most the text encoder's context)
        return worst_case(context, None, 0)
    if endpoint == "completions":
        return prompts_worst_case(body.get("prompt", ""), context, output_limit(body), choices(body))
    return chat_worst_case(body, context, prompt_tokens)


def transcription_worst_case(seconds: float | None, context: int) -> int | None:
    """A transcription of at most `seconds` (`neuron.shared.audio_bound`): what the encoder reads, 50 a
    second, plus a context of text (the prompt, then each 30-second window's answer) per window and one more
    for the prompt. None: the audio or the context not known."""
    if seconds is None or not context:
        return None
    return math.ceil(seconds * POSITIONS_PER_S) + (math.ceil(max(seconds, 1.0) / WINDOW_S) + 1) * context


def fits(settled: int, reserved: int, tokens: int, budget: int | None) -> bool:
    """The reservation rule the state database applies atomically, for the pure tests and the messages."""
    return budget is None or settled + reserved + tokens <= budget


def budget_refusal(used: Sequence[int], tokens: int, budget: int, window: str, period: Period) -> str:
    """Why a request was refused for the budget: what is used, what it needs, when the window rolls."""
    settled, reserved = used
    rolls = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(period.rolls_at))
    if budget == 0:
        return f"this key's token budget is 0 tokens per {window}: it may list models but not use them"
    if tokens > budget:
        return (f"this request may use up to {tokens} tokens, more than this key's whole budget of {budget} per "
                f"{window}: lower max_tokens (or ask for a larger budget)")
    return (f"this key's token budget is used up for now: {settled} of {budget} tokens used in the {window} "
            f"window {period.label} and {reserved} held by requests in flight; this request may use up to "
            f"{tokens}. The window rolls at {rolls}")
