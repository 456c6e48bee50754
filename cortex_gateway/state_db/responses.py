"""The responses table's operations, as transaction scripts (see `script`): the Responses store shared by
gateways on one PostgreSQL (`cortex_gateway.responses.store`). A put keeps the owner's bounds in the same
transaction: its responses older than the age bound, and beyond the newest `max_entries`, are deleted."""

from __future__ import annotations

from cortex_gateway.state_db.script import Script, execute, one


def put(response_id: str, owner: str, stored_at: float, size: int, body: str, max_entries: int,
        oldest: float) -> Script[None]:
    yield execute("INSERT INTO responses (id, owner, stored_at, size, body) VALUES ($1, $2, $3, $4, $5) "
                  "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, stored_at = excluded.stored_at, "
                  "size = excluded.size, body = excluded.body", response_id, owner, stored_at, size, body)
    # OFFSET without LIMIT: PostgreSQL's SQL (only a gateway on PostgreSQL keeps its responses here).
    yield execute("DELETE FROM responses WHERE owner = $1 AND (stored_at <= $2 OR id IN (SELECT id FROM responses "
                  "WHERE owner = $1 ORDER BY stored_at DESC, id OFFSET $3))", owner, oldest, max_entries)


def get(response_id: str, oldest: float) -> Script[tuple[str, float, int, str] | None]:
    """(owner, stored_at, size, body) of the response, if stored after `oldest`."""
    row = yield one("SELECT owner, stored_at, size, body FROM responses WHERE id = $1 AND stored_at > $2",
                    response_id, oldest)
    return None if row is None else tuple(row)


def delete(response_id: str) -> Script[None]:
    yield execute("DELETE FROM responses WHERE id = $1", response_id)
