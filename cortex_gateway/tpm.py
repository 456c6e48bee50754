"""Tokens per minute per key: a token bucket, reserved at admission and settled when the request ends.

Pure, like the requests-per-minute bucket of `cortex_gateway.auth`: each call takes the time it decides
at (a monotonic clock's seconds), so tests drive it with a clock of their own. A key's bucket holds at
most `limit` tokens and refills at `limit` / 60 a second. A request takes its worst case
(`cortex_gateway.budgets`) at admission, or is refused with the seconds until that much is back; when it
ends, what it did not use is given back (a request that used more, which the worst case rules out, is
charged the rest, leaving the bucket below zero until it refills).

The buckets live in the gateway's memory: with several gateways on one database a key gets `limit` per
gateway. The budget (`cortex_gateway.metering`) is the shared, exact limit; TPM smooths bursts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    limit: int
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.limit / 60.0
        self.level = min(float(self.limit), self.level + max(0.0, now - self.updated) * rate)
        self.updated = now

    def wait_for(self, tokens: int) -> float:
        """Seconds until `tokens` are in the bucket (0: they are now)."""
        return max(0.0, (tokens - self.level) * 60.0 / self.limit)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again: OpenAI's reset-tokens, Anthropic's tokens-reset."""
        return max(0.0, (self.limit - self.level) * 60.0 / self.limit)


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


@dataclass
class TpmLimiter:
    """Every key's bucket, by key name; a key's limit is read from its settings at each request, so a key
    updated at run time takes its new limit at once."""

    buckets: dict[str, Bucket] = field(default_factory=dict)

    def _bucket(self, key: str, limit: int, now: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(limit, float(limit), now)
        elif bucket.limit != limit:
            bucket.refill(now)
            bucket.level, bucket.limit = min(bucket.level, float(limit)), limit
        bucket.refill(now)
        return bucket

    def take(self, key: str, limit: int, tokens: int, now: float) -> TpmState | TpmRefusal:
        """Take `tokens` from the key's bucket: its state after, or a refusal (nothing taken)."""
        bucket = self._bucket(key, limit, now)
        if tokens > limit:
            return TpmRefusal(_state(bucket), None, tokens)
        if bucket.level < tokens:
            return TpmRefusal(_state(bucket), bucket.wait_for(tokens), tokens)
        bucket.level -= tokens
        return _state(bucket)

    def settle(self, key: str, taken: int, used: int, now: float) -> None:
        """The request ended having used `used` of the `taken` tokens: the rest goes back."""
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.refill(now)
            bucket.level = min(float(bucket.limit), bucket.level + taken - used)

    def state(self, key: str, limit: int, now: float) -> TpmState:
        return _state(self._bucket(key, limit, now))


def _state(bucket: Bucket) -> TpmState:
    return TpmState(bucket.limit, max(0, int(bucket.level)), bucket.reset_s())


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
