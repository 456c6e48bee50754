"""Tokens per minute that hold across gateways: each key's token bucket as one row, taken from atomically.

A key's bucket holds at most `limit` tokens and refills at `limit` / 60 a second. The row keeps the
level at `updated_at`; every script refills it to `now` in SQL (`_refilled`, the one place the refill
is written), so a take is one conditional UPDATE: the refilled level less the tokens, WHERE that is not
below zero. As with a budget's reservation (`usage`), PostgreSQL re-evaluates the WHERE and the new
level on the row's newest version when two gateways take at once, and SQLite's BEGIN IMMEDIATE runs one
writer at a time, so no interleaving lets two takes share room for one.

`now` is the gateway's wall clock (`StateDB.clock`), passed in rather than read from the database's:
the statements stay the same text in both dialects (PostgreSQL's clock_timestamp() and SQLite's
julianday() are not), and tests drive the refill with a clock of their own. Clocks of several gateways
differ by what NTP leaves (milliseconds), and the row's time never goes back (a take by a gateway whose
clock is behind refills nothing until its clock passes it), so a skew of d seconds lets a key have d
seconds' refill early, once: `limit` * d / 60 tokens, never a rate above its limit.

The limit is the caller's, read from the key's settings at each request: a lowered limit caps the level
at once, a raised one refills to the new cap at the new rate. A gateway that dies holding tokens never
gives them back; the bucket refills them within a minute, so nothing needs releasing at start.
"""

from __future__ import annotations

from dataclasses import dataclass

from cortex_gateway.state_db.script import Script, execute, one


@dataclass(frozen=True)
class BucketLevel:
    """A take's outcome: whether the tokens were taken, and the bucket's level after (or, not taken, now)."""

    taken: bool
    level: float


def _num(n: int) -> str:
    return f"CAST(${n} AS DOUBLE PRECISION)"  # every parameter but the key's name is one, in both dialects


def _least(a: str, b: str) -> str:
    return f"(CASE WHEN {a} < {b} THEN {a} ELSE {b} END)"  # portable: SQLite has no LEAST, PostgreSQL no min(a, b)


def _later(now: str) -> str:
    """The row's new time: `now`, unless a gateway with a clock ahead wrote a later one."""
    return f"(CASE WHEN {now} > updated_at THEN {now} ELSE updated_at END)"


def _refilled(limit: str, now: str) -> str:
    """The row's level refilled to `now` at `limit` / 60 a second, at most `limit`."""
    elapsed = f"(CASE WHEN {now} > updated_at THEN {now} - updated_at ELSE 0 END)"
    return _least(f"level + {elapsed} * {limit} / 60", limit)


# take and give_back: $1 the key, $2 its limit, $3 the tokens, $4 now; the level read: $2 the limit, $3 now.
_LIMIT, _TOKENS, _NOW = _num(2), _num(3), _num(4)
_NEW_BUCKET = f"INSERT INTO tpm_buckets (key_name, level, updated_at) VALUES ($1, {_LIMIT}, {_num(3)}) " \
              "ON CONFLICT DO NOTHING"
_TAKE = (f"UPDATE tpm_buckets SET level = {_refilled(_LIMIT, _NOW)} - {_TOKENS}, updated_at = {_later(_NOW)} "
         f"WHERE key_name = $1 AND {_refilled(_LIMIT, _NOW)} >= {_TOKENS} RETURNING level")
_GIVE_BACK = (f"UPDATE tpm_buckets SET level = {_least(f'{_refilled(_LIMIT, _NOW)} + {_TOKENS}', _LIMIT)}, "
              f"updated_at = {_later(_NOW)} WHERE key_name = $1 RETURNING level")
_LEVEL = f"SELECT {_refilled(_LIMIT, _num(3))} FROM tpm_buckets WHERE key_name = $1"


def _check(limit: int, tokens: int) -> None:
    if limit <= 0 or tokens < 0:
        raise ValueError(f"a TPM limit is > 0 and tokens >= 0, got {limit} and {tokens}")


def take(key: str, limit: int, tokens: int, now: float) -> Script[BucketLevel]:
    """Take `tokens` from the key's bucket (made full on first use) if the refilled level holds them;
    otherwise nothing changes and the level returned is the refilled one, for the Retry-After."""
    _check(limit, tokens)
    limit_f, now_f = float(limit), float(now)  # every parameter is a DOUBLE PRECISION in the SQL
    yield execute(_NEW_BUCKET, key, limit_f, now_f)
    row = yield one(_TAKE, key, limit_f, float(tokens), now_f)
    if row is not None:
        return BucketLevel(True, float(row[0]))
    return BucketLevel(False, float((yield one(_LEVEL, key, limit_f, now_f))[0]))


def give_back(key: str, limit: int, tokens: int, now: float) -> Script[float | None]:
    """Return `tokens` (what a request took and did not use; negative: it used more, charged now) to the
    key's bucket, never above `limit`: the level after, or None for a key with no bucket."""
    if limit <= 0:
        raise ValueError(f"a TPM limit is > 0, got {limit}")
    row = yield one(_GIVE_BACK, key, float(limit), float(tokens), float(now))
    return None if row is None else float(row[0])


def level(key: str, limit: int, now: float) -> Script[float]:
    """The key's bucket refilled to `now`, changing nothing (a key that never took: full)."""
    row = yield one(_LEVEL, key, float(limit), float(now))
    return float(limit) if row is None else float(row[0])
