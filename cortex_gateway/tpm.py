"""Tokens per minute per key: a token bucket, taken from at admission and given back to when the request ends.

A key's bucket holds at most `limit` tokens and refills at `limit` / 60 a second. A request takes its
worst case (`cortex_gateway.budgets`) at admission, or is refused with the seconds until that much is
back; when it ends, what it did not use is given back (a request that used more, which the worst case
rules out, is charged the rest, leaving the bucket below zero until it refills).

The bucket is a row of the state database (`cortex_gateway.state_db.tpm`: the refill and the take, in
one atomic UPDATE), so a key's limit holds exactly across every gateway sharing one PostgreSQL, as its
budget does. This module turns a bucket's level into what the client is told (the refusal, the headers),
purely; `take` and `give_back` are the two calls metering makes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cortex_gateway.state_db import StateDB, StateError

log = logging.getLogger("cortex.gateway.tpm")


@dataclass(frozen=True)
class TpmState:
    """What the rate-limit headers say of a key's tokens per minute, at one moment."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class TpmRefusal:
    """A request that does not fit: how long until it would (None: never, its worst case is over the limit)."""

    state: TpmState
    retry_after: float | None
    tokens: int

    def message(self) -> str:
        if self.retry_after is None:
            return (f"this request may use up to {self.tokens} tokens, more than this key's limit of "
                    f"{self.state.limit} tokens per minute: lower max_tokens")
        return (f"this key is limited to {self.state.limit} tokens per minute; {self.state.remaining} are left and "
                f"this request may use up to {self.tokens}: retry in {self.retry_after:.1f} s")


def state_of(limit: int, level: float) -> TpmState:
    """A bucket of `limit` at `level`: what is left, and the seconds until it is full again (OpenAI's
    reset-tokens, Anthropic's tokens-reset)."""
    return TpmState(limit, max(0, int(level)), max(0.0, (limit - level) * 60.0 / limit))


def decide(limit: int, tokens: int, taken: bool, level: float) -> TpmState | TpmRefusal:
    """A take's outcome as the client hears it: the state after, or the refusal with the seconds until
    `tokens` are in the bucket (None when they never can be)."""
    state = state_of(limit, level)
    if taken:
        return state
    return TpmRefusal(state, None if tokens > limit else max(0.0, (tokens - level) * 60.0 / limit), tokens)


async def take(db: StateDB, key: str, limit: int, tokens: int) -> TpmState | TpmRefusal:
    """Take `tokens` from the key's bucket in the database, or the refusal (nothing taken). StateError when
    the database cannot be reached: the caller refuses the request (it cannot know what is left)."""
    got = await db.tpm_take(key, limit, tokens)
    return decide(limit, tokens, got.taken, got.level)


async def give_back(db: StateDB, key: str, limit: int, taken: int, used: int) -> TpmState | None:
    """The request ended having used `used` of the `taken` tokens: the rest goes back; the state after,
    None if it could not be written (logged: the bucket refills what was lost within a minute)."""
    try:
        level = await db.tpm_give_back(key, limit, taken - used)
    except StateError as exc:
        log.info("key %s: %d tokens per minute not given back: %s", key, taken - used, exc)
        return None
    return None if level is None else state_of(limit, level)


def go_duration(seconds: float) -> str:
    """OpenAI's form of a reset time, Go's duration: `250ms`, `7.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole_minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def rfc3339(epoch_s: float) -> str:
    """Anthropic's form of a reset time: the moment, in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def openai_headers(state: TpmState) -> dict[str, str]:
    return {"x-ratelimit-limit-tokens": str(state.limit), "x-ratelimit-remaining-tokens": str(state.remaining),
            "x-ratelimit-reset-tokens": go_duration(state.reset_s)}


def anthropic_headers(state: TpmState, now_epoch: float) -> dict[str, str]:
    return {"anthropic-ratelimit-tokens-limit": str(state.limit),
            "anthropic-ratelimit-tokens-remaining": str(state.remaining),
            "anthropic-ratelimit-tokens-reset": rfc3339(now_epoch + state.reset_s)}


def requests_headers(limit: int, remaining: float, anthropic: bool, now_epoch: float) -> dict[str, str]:
    """The rpm limit's headers (its bucket is the keys layer's, `auth.KeyLimiter`): `remaining` requests
    now, and the time until the bucket is full again."""
    reset_s = max(0.0, (limit - remaining) * 60.0 / limit)
    left = str(max(0, int(remaining)))
    if anthropic:
        return {"anthropic-ratelimit-requests-limit": str(limit), "anthropic-ratelimit-requests-remaining": left,
                "anthropic-ratelimit-requests-reset": rfc3339(now_epoch + reset_s)}
    return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": left,
            "x-ratelimit-reset-requests": go_duration(reset_s)}
