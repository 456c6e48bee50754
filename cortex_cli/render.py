"""Rich tables for the operator commands (the TUI draws its own widgets from the same data)."""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from neuron.shared.kinds import kind_label


def plain(value) -> Text:
    """A value from the fleet as literal text: `[bold]` or `[/]` in a model name is not markup."""
    return Text(str(value))


def memory_bar(used: float, total: float, width: int = 16) -> Text:
    frac = 0.0 if total <= 0 else min(1.0, used / total)
    filled = round(frac * width)
    colour = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    bar = Text("█" * filled, style=colour) + Text("░" * (width - filled), style="dim")
    return bar + Text(f" {used / 1024:.1f}/{total / 1024:.1f} GiB")


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def nodes_table(status: dict) -> Table:
    table = Table(title="Nodes", title_justify="left", expand=False)
    for col in ("node", "health", "endpoint", "devices", "models loaded"):
        table.add_column(col)
    for node in status["nodes"]:
        health = node_health(node)
        devices = Group(*[plain(f"{d['id']} ") + memory_bar(d.get("used_mb", 0), d.get("total_mb", 0))
                          for d in node["devices"]]) if node["devices"] else Text("-", style="dim")
        loaded = [m["id"] for m in node["models"] if m.get("status") == "loaded"]
        table.add_row(plain(node["name"]), health, plain(node["endpoint"]), devices, plain(", ".join(loaded) or "-"))
    return table


def node_health(node: dict) -> Text:
    """up / draining (with what is still in flight) / down."""
    if not node["healthy"]:
        return Text("down", style="bold red")
    if node.get("draining"):
        return Text(f"draining ({node.get('in_flight', 0)} in flight)", style="bold yellow")
    return Text("up", style="bold green")


def model_rows(status: dict) -> list[dict]:
    """One row per (model, node) where a model is loaded or loading, with the gateway's figures."""
    pins = status.get("pins", {})
    stats = status.get("stats", {})
    rows = []
    for node in status["nodes"]:
        for m in node["models"]:
            s = stats.get(m["id"], {})
            rows.append({
                "model": m["id"], "node": node["name"], "kind": kind_label(m.get("kind")),
                "status": m.get("status", "?"),
                "pinned": node["name"] in pins.get(m["id"], []), "in_flight": m.get("gateway_in_flight", 0),
                "queue": m.get("queued", 0), "memory_mb": m.get("memory_mb", 0.0),
                "tok_s": node.get("decode_tps", {}).get(m["id"]) or s.get("tokens_per_s"),
                "ttft_p50_s": s.get("ttft_p50_s"), "req_min": s.get("requests_per_min", 0),
                "last_used": m.get("last_used"), "slots": _slots_text(node.get("slots", {}).get(m["id"])),
                "draft": draft_text(node.get("drafts", {}).get(m["id"])),
            })
    return rows


def _slots_text(slots: dict | None) -> str:
    """Batch slots in use, e.g. "3/8"; "-" for a model whose backend does not batch."""
    if not isinstance(slots, dict) or not slots.get("slots"):
        return "-"
    return f"{slots.get('running', 0)}/{slots['slots']}"


def draft_text(drafts: dict | None) -> str:
    """Speculative decoding's acceptance rate since the load, the share of draft tokens kept, e.g. "73%";
    "-" for a model that never drafted (no speculative, no prediction yet, or an older gateway)."""
    if not isinstance(drafts, dict) or not drafts.get("drafted"):
        return "-"
    return f"{100 * drafts.get('accepted', 0) / drafts['drafted']:.0f}%"


def models_table(status: dict) -> Table:
    table = Table(title="Models", title_justify="left")
    for col in ("model", "node", "kind", "status", "pinned", "in flight", "slots", "draft", "memory", "last used"):
        table.add_column(col)
    for r in model_rows(status):
        style = {"loaded": "green", "loading": "yellow", "recovering": "yellow", "poisoned": "red"}.get(r["status"])
        table.add_row(plain(r["model"]), plain(r["node"]), r["kind"], Text(r["status"], style=style or ""),
                      "yes" if r["pinned"] else "",
                      str(r["in_flight"]), r["slots"], r["draft"], f"{r['memory_mb']:.0f} MiB", ago(r["last_used"]))
    return table


def replicas_text(model: dict) -> str:
    """A model's replicas as "2 (n1, n2)", and "+1 loading (n3)" while a load is under way."""
    serving, loading = model.get("replicas", []), model.get("loading", [])
    text = f"{len(serving)} ({', '.join(serving)})" if serving else "0"
    return text + (f" +{len(loading)} loading ({', '.join(loading)})" if loading else "")


def bounds_text(model: dict) -> str:
    """The floor and ceiling, "min..max" (0..1 for a model without a profile: one node, on demand)."""
    return f"{model.get('min_replicas', 0)}..{model.get('max_replicas', 1)}"


def replicas_table(status: dict) -> Table:
    """Per model (the gateway's `models` summary): replicas, floor..ceiling, in flight, waiting for a slot, and
    waiting for room (its cold load waits for busy models: how many requests, for how long, where it yields)."""
    table = Table(title="Replicas", title_justify="left")
    for col in ("model", "replicas", "min..max", "in flight", "waiting", "waiting for room"):
        table.add_column(col)
    for m in status.get("models", []):
        waiting = m.get("waiting", 0)
        table.add_row(plain(m["id"]), plain(replicas_text(m)), bounds_text(m), str(m.get("in_flight", 0)),
                      Text(str(waiting), style="bold yellow" if waiting else ""), room_text(m))
    return table


def room_text(model: dict) -> Text:
    """"3 for 12.5s", "yields on n1", both, or nothing: the swap-aware queue's view of one model."""
    parts = []
    if model.get("waiting_for_room"):
        parts.append(f"{model['waiting_for_room']} for {model.get('waited_s', 0):g}s")
    if model.get("yielding"):
        parts.append("yields on " + ", ".join(model["yielding"]))
    return Text("; ".join(parts), style="bold yellow" if parts else "")


def event_details(event: dict) -> str:
    """An event's details as `key=value ...` (what the gateway logs), its time and kind left out."""
    return " ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "kind"))


def event_time(event: dict) -> str:
    """An event's time of day, local, "10:40:12"."""
    return time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))


def events_table(status: dict, last: int = 10) -> Table:
    """The fleet's latest events (loads, evictions, scale out and in, keep-alive unloads...), oldest first."""
    table = Table(title="Recent events", title_justify="left")
    for col in ("time", "event", "details"):
        table.add_column(col)
    for event in status.get("events", [])[-last:]:
        table.add_row(event_time(event), plain(event.get("kind", "?")), plain(event_details(event)))
    return table


def catalog_table(models: list[dict]) -> Table:
    table = Table(title="Catalog", title_justify="left")
    for col in ("model", "loaded on", "loadable on", "pinned on", "alias of"):
        table.add_column(col)
    for m in models:
        table.add_row(*(plain(cell) for cell in (
            m["id"], ", ".join(m.get("loaded_on", [])) or "-", ", ".join(m.get("loadable_on", [])) or "-",
            ", ".join(m.get("pinned_on", [])), m.get("alias_of", ""))))
    return table


def disk_table(node: dict) -> Table:
    """What is on one node's disk (its models directory), with sizes and whether each is loaded."""
    loaded = {m.get("id") for m in node.get("models", [])}
    table = Table(title=f"On {node['name']}'s disk", title_justify="left")
    for col in ("model", "format", "size", "loaded"):
        table.add_column(col)
    total = 0.0
    for model in node.get("disk", []):
        total += model.get("size_mb", 0.0)
        table.add_row(plain(model["id"]), plain(model.get("format", "")), f"{model.get('size_mb', 0) / 1024:.2f} GiB",
                      "yes" if model["id"] in loaded else "")
    table.caption = f"{len(node.get('disk', []))} models, {total / 1024:.2f} GiB"
    return table
