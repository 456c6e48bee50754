"""What the dashboard shows, derived from the gateway's status: pure functions, no widgets."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from cortex_cli.render import model_rows

SORT_KEYS = ("model", "node", "status", "in_flight", "tok_s", "req_min", "memory_mb")


@dataclass(frozen=True)
class Row:
    model: str
    node: str
    status: str
    pinned: bool
    in_flight: int
    queue: int
    tok_s: float | None
    ttft_p50_s: float | None
    req_min: int
    memory_mb: float
    slots: str = "-"  # batch slots in use, "3/8"

    @property
    def key(self) -> str:
        return f"{self.node}/{self.model}"


def rows_from_status(status: dict) -> list[Row]:
    """Loaded (or loading) models per node, then models a node could load, as `available`."""
    rows = [Row(r["model"], r["node"], r["status"], r["pinned"], r["in_flight"], r["queue"], r["tok_s"],
                r["ttft_p50_s"], r["req_min"], r["memory_mb"], r["slots"]) for r in model_rows(status)]
    present = {(r.node, r.model) for r in rows}
    pins = status.get("pins", {})
    for node in status.get("nodes", []):
        for model in node.get("available", []):
            if (node["name"], model) not in present:
                rows.append(Row(model, node["name"], "available", node["name"] in pins.get(model, []),
                                0, 0, None, None, 0, 0.0))
        rows.extend(_pull_row(node["name"], p) for p in node.get("pulls", []) if p.get("phase") != "done")
    return rows


def _pull_row(node: str, pull: dict) -> Row:
    """A pull from the hub under way (or failed), as a row: its progress in the status column."""
    total, done = pull.get("total_bytes") or 0, pull.get("done_bytes") or 0
    status = pull.get("phase", "pulling")
    if status == "downloading" and total:
        status = f"pulling {100 * done / total:.0f}%"
    return Row(pull.get("id") or pull.get("source", "?"), node, status, False, 0, 0, None, None, 0, 0.0)


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    numeric = key in ("in_flight", "tok_s", "req_min", "memory_mb")
    if numeric:
        return sorted(rows, key=lambda r: (-(getattr(r, key) or 0), r.model, r.node))
    return sorted(rows, key=lambda r: (str(getattr(r, key)), r.model, r.node))


def filter_rows(rows: list[Row], text: str) -> list[Row]:
    text = text.strip().lower()
    if not text:
        return rows
    return [r for r in rows if text in r.model.lower() or text in r.node.lower() or text in r.status]


def format_row(r: Row) -> tuple[Text, ...]:
    """Cells as literal Text: Textual reads a plain string cell as markup, and names come from the fleet."""
    return tuple(Text(cell) for cell in _cells(r))


def _cells(r: Row) -> tuple[str, ...]:
    return (r.model, r.node, r.status, "pin" if r.pinned else "", str(r.in_flight), r.slots, str(r.queue),
            "-" if r.tok_s is None else f"{r.tok_s:.0f}",
            "-" if r.ttft_p50_s is None else f"{r.ttft_p50_s * 1000:.0f} ms", str(r.req_min),
            "-" if not r.memory_mb else f"{r.memory_mb:.0f} MiB")


COLUMNS = ("model", "node", "status", "pinned", "in flight", "slots", "queue", "tok/s", "TTFT p50", "req/min", "memory")


def event_line(event: dict) -> str:
    import time

    when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "kind"))
    return f"{when} {event.get('kind', '?'):<9} {details}"
