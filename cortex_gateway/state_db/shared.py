"""The pins, drains and events tables' operations, as transaction scripts (see `script`).

Pins and drains are what an operator set through some gateway's admin API: every gateway reads them
back on its rounds and applies them over its models file (`cortex_gateway.shared_admin`). Events are
appended by every gateway and read newest first; the table is kept to `EVENTS_KEPT` rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cortex_gateway.state_db.script import Script, execute, rows

EVENTS_KEPT = 1000  # rows the events table keeps (the oldest go when a prune runs)


@dataclass(frozen=True)
class AdminState:
    """What the admin API set: (model, node) -> pinned or unpinned, and node -> draining or not."""

    pins: dict[tuple[str, str], bool]
    drains: dict[str, bool]


def set_pin(model: str, node: str, pinned: bool, now: float) -> Script[None]:
    yield execute("INSERT INTO pins (model, node, pinned, updated_at) VALUES ($1, $2, $3, $4) "
                  "ON CONFLICT (model, node) DO UPDATE SET pinned = excluded.pinned, updated_at = excluded.updated_at",
                  model, node, int(pinned), now)


def set_drain(node: str, draining: bool, now: float) -> Script[None]:
    yield execute("INSERT INTO drains (node, draining, updated_at) VALUES ($1, $2, $3) "
                  "ON CONFLICT (node) DO UPDATE SET draining = excluded.draining, updated_at = excluded.updated_at",
                  node, int(draining), now)


def admin_state() -> Script[AdminState]:
    pins = yield rows("SELECT model, node, pinned FROM pins")
    drains = yield rows("SELECT node, draining FROM drains")
    return AdminState({(m, n): bool(p) for m, n, p in pins}, {n: bool(d) for n, d in drains})


def append_events(instance_id: str, events: list[dict]) -> Script[None]:
    for event in events:
        details = {k: v for k, v in event.items() if k not in ("time", "kind")}
        yield execute("INSERT INTO events (time, instance_id, kind, details) VALUES ($1, $2, $3, $4)",
                      float(event["time"]), instance_id, str(event["kind"]), json.dumps(details, default=str))


def prune_events(keep: int = EVENTS_KEPT) -> Script[None]:
    """Keep the newest `keep` events."""
    yield execute("DELETE FROM events WHERE time < (SELECT time FROM events ORDER BY time DESC LIMIT 1 OFFSET $1)",
                  keep)


def recent_events(limit: int) -> Script[list[dict]]:
    """The newest `limit` events of every gateway, oldest first; each names the gateway it came from."""
    found = yield rows("SELECT time, instance_id, kind, details FROM events ORDER BY time DESC LIMIT $1", limit)
    return [{"time": t, "kind": kind, **json.loads(details), "gateway": gateway}
            for t, gateway, kind, details in reversed(found)]
