"""Budgets that never overshoot: reserve, settle, release, and the usage rows, as transaction scripts.

A reservation fits when the key's settled tokens in the window's period, plus its open reservations
there, plus the new one, are at most the budget. That sum is kept in `budget_totals`, one row per key and
period, and the check is the WHERE of the one UPDATE that adds the tokens: PostgreSQL re-evaluates it
on the row's newest version when two transactions update the row at once (the second waits for the
first to commit, then sees its tokens), and SQLite's BEGIN IMMEDIATE runs one writer at a time. So no
interleaving of any number of gateways can let two reservations both fit in room for one.

Settling deletes the reservation and adds the real usage in the same transaction, so usage is never
counted twice (a second settle finds no reservation and does nothing) and never lost once `settle` has
returned (the commit came first). Lock order, the same in every script: reservations, then
budget_totals (in key and period order), then usage; so two gateways never deadlock on each other.
A replayed spool (`record_spooled`) takes each line's `spooled_usage` row (no other script touches them) first.
"""

from __future__ import annotations

from cortex_gateway.state_db.records import Released, Reservation, UsageRow
from cortex_gateway.state_db.script import Script, execute, one, rows

_ADD_TOTALS = ("INSERT INTO budget_totals (key_name, period, settled_tokens, reserved_tokens) VALUES ($1, $2, 0, 0) "
               "ON CONFLICT DO NOTHING")
_BILL_USAGE = ("INSERT INTO usage (key_name, model, period, prompt_tokens, completion_tokens, requests) "
               "VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (key_name, model, period) DO UPDATE SET "
               "prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, "
               "completion_tokens = usage.completion_tokens + excluded.completion_tokens, "
               "requests = usage.requests + 1")
_ADD_USAGE = ("INSERT INTO usage (key_name, model, period, prompt_tokens, completion_tokens, requests) "
              "VALUES ($1, $2, $3, 0, 0, 0) ON CONFLICT DO NOTHING")


def reserve(reservation: Reservation, budget: int | None) -> Script[Reservation | None]:
    """Hold `reservation.tokens` for its key and period if they fit in `budget` (None: no budget, always)."""
    r = reservation
    if r.tokens < 0 or (budget is not None and budget < 0):
        raise ValueError(f"tokens and budget are counts >= 0, got {r.tokens} and {budget}")
    yield execute(_ADD_TOTALS, r.key, r.window)
    held = yield one("UPDATE budget_totals SET reserved_tokens = reserved_tokens + $3 "
                     "WHERE key_name = $1 AND period = $2 "
                     "AND (CAST($4 AS BIGINT) IS NULL OR settled_tokens + reserved_tokens + $3 <= CAST($4 AS BIGINT)) "
                     "RETURNING reserved_tokens", r.key, r.window, r.tokens, budget)
    if held is None:
        return None
    yield execute(_ADD_USAGE, r.key, r.model, r.window)  # so usage() shows the reservation before any settle
    yield execute("INSERT INTO reservations (id, key_name, model, period, tokens, instance_id, created_at) "
                  "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                  r.id, r.key, r.model, r.window, r.tokens, r.instance_id, r.created_at)
    return r


def _take(reservation_id: str) -> Script[tuple | None]:
    """Delete an open reservation; its (key, model, period, tokens), or None if it is settled or released."""
    return (yield one("DELETE FROM reservations WHERE id = $1 RETURNING key_name, model, period, tokens",
                      reservation_id))


def settle(reservation_id: str, prompt_tokens: int, completion_tokens: int) -> Script[bool]:
    """Replace the reservation by the usage the answer reported; False if it was already settled or released."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts are >= 0, got {prompt_tokens} and {completion_tokens}")
    taken = yield from _take(reservation_id)
    if taken is None:
        return False
    key, model, period, tokens = taken
    yield execute("UPDATE budget_totals SET reserved_tokens = reserved_tokens - $3, "
                  "settled_tokens = settled_tokens + $4 WHERE key_name = $1 AND period = $2",
                  key, period, tokens, prompt_tokens + completion_tokens)
    yield execute(_BILL_USAGE, key, model, period, prompt_tokens, completion_tokens)
    return True


def mark(record_id: str, now: float) -> Script[bool]:
    """Note a request's usage id as billed; False if it already was. A direct `record` notes its id so
    that, when its commit's answer is lost (the database went down between the two) and the gateway spools
    the same id, the replay finds it billed: one bill, whichever way it reached the database."""
    return (yield one("INSERT INTO spooled_usage (id, replayed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING "
                      "RETURNING id", record_id, now)) is not None


def record(key: str, model: str, period: str, prompt_tokens: int, completion_tokens: int,
           billed: tuple[str, float] | None = None) -> Script[bool]:
    """Bill a request that held no reservation (its key has no budget to hold against): its usage and the
    period's settled total, as `settle` adds them, in one transaction instead of a reserve and a settle.
    With `billed` (its id, now), noted by `mark` first, and nothing billed (False) if it was already."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError(f"token counts are >= 0, got {prompt_tokens} and {completion_tokens}")
    if billed is not None and not (yield from mark(*billed)):
        return False
    yield execute(_ADD_TOTALS, key, period)
    yield execute("UPDATE budget_totals SET settled_tokens = settled_tokens + $3 WHERE key_name = $1 AND period = $2",
                  key, period, prompt_tokens + completion_tokens)
    yield execute(_BILL_USAGE, key, model, period, prompt_tokens, completion_tokens)
    return True


def prune_marks(before: float) -> Script[int]:
    """Forget billed ids noted before `before` (a spool is replayed within minutes of the database's return;
    past the kept span, a spooled line whose commit did land could be billed twice); how many."""
    gone = yield rows("DELETE FROM spooled_usage WHERE replayed_at < $1 RETURNING id", before)
    return len(gone)


def record_spooled(records: list, now: float) -> Script[int]:
    """Bill requests replayed from a gateway's spool (`spool.SpooledUsage`), each as `record` bills it (or as
    the settle of its reservation), but only if its id is not yet in `spooled_usage`, where it goes in the
    same transaction: replayed twice, billed once. How many were billed now. Key, period and model order:
    the lock order of every script."""
    billed = 0
    for r in sorted(records, key=lambda r: (r.key, r.period, r.model)):
        if not (yield from mark(r.id, now)):  # replayed before, or billed directly before its answer was lost
            continue
        if r.reservation is None:
            yield from record(r.key, r.model, r.period, r.prompt_tokens, r.completion_tokens)
            billed += 1
        # A settle whose reservation is gone did commit (its answer was lost on the way back) and is not
        # billed again; a start replays before it releases what it held, so no spooled one is released.
        elif (yield from settle(r.reservation, r.prompt_tokens, r.completion_tokens)):
            billed += 1
    return billed


def _unreserve(key: str, period: str, tokens: int) -> Script[None]:
    yield execute("UPDATE budget_totals SET reserved_tokens = reserved_tokens - $3 WHERE key_name = $1 AND period = $2",
                  key, period, tokens)


def release(reservation_id: str) -> Script[bool]:
    """Give the tokens back unbilled (a request refused before it ran); False if already settled or released."""
    taken = yield from _take(reservation_id)
    if taken is None:
        return False
    key, _model, period, tokens = taken
    yield from _unreserve(key, period, tokens)
    return True


def release_stale(instance_id: str) -> Script[Released]:
    """Let go of every reservation an instance holds (at its start: what a dead process held); settled usage stays."""
    gone = yield rows("DELETE FROM reservations WHERE instance_id = $1 RETURNING key_name, period, tokens",
                      instance_id)
    held: dict[tuple[str, str], int] = {}
    for key, period, tokens in gone:
        held[(key, period)] = held.get((key, period), 0) + tokens
    for (key, period), tokens in sorted(held.items()):  # key order: the lock order of every script
        yield from _unreserve(key, period, tokens)
    return Released(len(gone), sum(held.values()))


def usage(key: str | None = None) -> Script[list[UsageRow]]:
    """Usage rows (of one key, or all), each with the tokens its open reservations hold."""
    where, args = ("WHERE u.key_name = $1 ", (key,)) if key is not None else ("", ())
    found = yield rows(
        "SELECT u.key_name, u.model, u.period, u.prompt_tokens, u.completion_tokens, u.requests, "
        "COALESCE(r.tokens, 0) FROM usage u LEFT JOIN "
        "(SELECT key_name, model, period, SUM(tokens) AS tokens FROM reservations GROUP BY key_name, model, period) r "
        "ON r.key_name = u.key_name AND r.model = u.model AND r.period = u.period "
        f"{where}ORDER BY u.key_name, u.model, u.period", *args)
    return [UsageRow(*row[:6], int(row[6])) for row in found]


def budget_used(key: str, window: str) -> Script[tuple[int, int]]:
    """(settled, reserved) tokens of a key in a window's period: what a 429 or a remaining-tokens header says."""
    row = yield one("SELECT settled_tokens, reserved_tokens FROM budget_totals WHERE key_name = $1 AND period = $2",
                    key, window)
    return (0, 0) if row is None else (int(row[0]), int(row[1]))
