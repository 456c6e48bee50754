"""What the dashboard shows, derived from the gateway's status: pure functions, no widgets."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from cortex_cli.render import bounds_text, event_details, event_time, model_rows
from neuron.shared.kinds import kind_label

SORT_KEYS = ("model", "node", "status", "in_flight", "waiting", "tok_s", "req_min", "memory_mb")


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
    replicas: str = "-"  # the model's replicas and floor..ceiling, "2 (1..2)", fleet-wide
    waiting: int = 0  # the model's requests waiting for a slot over all its replicas
    kind: str = "chat"  # what the model serves (neuron.shared.kinds): chat, embedding, rerank, ...
    draft: str = "-"  # speculative decoding's draft tokens kept since the load, "73%" (render.draft_text)

    @property
    def key(self) -> str:
        return f"{self.node}/{self.model}"


def rows_from_status(status: dict) -> list[Row]:
    """Loaded (or loading) models per node, then models a node could load, as `available`."""
    fleet_wide = {m["id"]: m for m in status.get("models", [])}
    rows = [Row(r["model"], r["node"], r["status"], r["pinned"], r["in_flight"], r["queue"], r["tok_s"],
                r["ttft_p50_s"], r["req_min"], r["memory_mb"], r["slots"], *_replicas(fleet_wide.get(r["model"])),
                kind=r["kind"], draft=r["draft"])
            for r in model_rows(status)]
    present = {(r.node, r.model) for r in rows}
    pins = status.get("pins", {})
    for node in status.get("nodes", []):
        kinds = {m.get("id"): kind_label(m.get("kind")) for m in node.get("disk", [])}
        for model in node.get("available", []):
            if (node["name"], model) not in present:
                rows.append(Row(model, node["name"], "available", node["name"] in pins.get(model, []),
                                0, 0, None, None, 0, 0.0, kind=kinds.get(model, "chat")))
        rows.extend(_pull_row(node["name"], p) for p in node.get("pulls", []) if p.get("phase") != "done")
    return rows


def _replicas(model: dict | None) -> tuple[str, int]:
    """The gateway's summary of a model as the row's replicas cell ("2 (1..2)") and waiting count."""
    if model is None:
        return "-", 0
    return f"{len(model.get('replicas', []))} ({bounds_text(model)})", model.get("waiting", 0)


def _pull_row(node: str, pull: dict) -> Row:
    """A pull from the hub under way (or failed), as a row: its progress in the status column."""
    total, done = pull.get("total_bytes") or 0, pull.get("done_bytes") or 0
    status = pull.get("phase", "pulling")
    if status == "downloading" and total:
        status = f"pulling {100 * done / total:.0f}%"
    return Row(pull.get("id") or pull.get("source", "?"), node, status, False, 0, 0, None, None, 0, 0.0)


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    numeric = key in ("in_flight", "waiting", "tok_s", "req_min", "memory_mb")
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
    return (r.model, r.node, r.kind, r.status, "pin" if r.pinned else "", r.replicas, str(r.in_flight), r.slots,
            str(r.queue), str(r.waiting),
            "-" if r.tok_s is None else f"{r.tok_s:.0f}", r.draft,
            "-" if r.ttft_p50_s is None else f"{r.ttft_p50_s * 1000:.0f} ms", str(r.req_min),
            "-" if not r.memory_mb else f"{r.memory_mb:.0f} MiB")


COLUMNS = ("model", "node", "kind", "status", "pinned", "replicas", "in flight", "slots", "queue", "waiting", "tok/s",
           "draft", "TTFT p50", "req/min", "memory")


KEY_COLUMNS = ("key", "window", "period", "requests", "settled", "reserved", "budget left", "tpm left")


def key_rows(usage: dict) -> list[tuple[Text, ...]]:
    """One row per key from /admin/usage: its current period's requests and tokens, its budget left and
    TPM left, as literal Text (names come from the gateway)."""
    requests: dict[str, int] = {}
    for r in usage.get("usage", []):
        if r.get("current"):
            requests[r["key"]] = requests.get(r["key"], 0) + r["requests"]
    rows = []
    for k in usage.get("keys", []):
        tpm, left = k.get("tpm"), k.get("budget_left")
        cells = (k["key"], k.get("budget_window") or "-", k["period"], str(requests.get(k["key"], 0)),
                 str(k["settled_tokens"]), str(k["reserved_tokens"]),
                 "-" if left is None else f"{left} of {k['budget_tokens']}",
                 "-" if not tpm else f"{tpm['remaining']} of {tpm['limit']}")
        rows.append(tuple(Text(c) for c in cells))
    return rows


def event_line(event: dict) -> str:
    return f"{event_time(event)} {event.get('kind', '?'):<9} {event_details(event)}"
