"""Replicas and waiting requests as the operator sees them: `cortex status`'s Replicas table and recent
events, and `cortex top`'s columns, from a canned `/admin/status` (the shape tests/test_admin_models.py
checks the gateway answers)."""

from __future__ import annotations

import orjson

from cortex_cli.top.data import COLUMNS, format_row, rows_from_status
from tests.test_hardening_gateway import CannedGateway, cortex

NAMES = "[bold]m[/bold]"  # markup in a name is shown as it is


def node(name: str, *models: str) -> dict:
    return {"name": name, "endpoint": f"http://{name}", "healthy": True, "devices": [], "available": [],
            "models": [{"id": m, "status": "loaded", "memory_mb": 10.0, "gateway_in_flight": 2} for m in models]}


def replicated_status() -> dict:
    models = [{"id": NAMES, "replicas": ["n1", "n2"], "loading": [], "min_replicas": 1, "max_replicas": 2,
               "in_flight": 7, "waiting": 3},
              {"id": "solo", "replicas": ["n2"], "loading": ["n1"], "min_replicas": 0, "max_replicas": 1,
               "in_flight": 0, "waiting": 0}]
    events = [{"time": 1.0, "kind": "scale_out", "node": "n2", "model": NAMES, "reason": "queue", "waiting": 9},
              {"time": 2.0, "kind": "keep_alive_unload", "node": "n1", "model": "old", "idle_s": 1802.3}]
    return {"nodes": [node("n1", NAMES), node("n2", NAMES, "solo")], "pins": {}, "stats": {}, "events": events,
            "models": models}


def test_status_shows_replicas_bounds_waiting_and_the_scale_events():
    with CannedGateway({"/admin/status": orjson.dumps(replicated_status())}) as gw:
        result = cortex(gw, "status")
    assert result.exit_code == 0, result.output
    out = result.output
    replicas = out[out.index("Replicas"):out.index("Recent events")]
    row = next(line for line in replicas.splitlines() if NAMES in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == [NAMES, "2 (n1, n2)", "1..2", "7", "3"]
    solo = next(line for line in replicas.splitlines() if "solo" in line)
    assert "1 (n2) +1 loading (n1)" in solo and "0..1" in solo
    events = out[out.index("Recent events"):]
    assert "scale_out" in events and f"model={NAMES} reason=queue waiting=9" in events
    assert "keep_alive_unload" in events and "idle_s=1802.3" in events


def test_status_from_a_gateway_without_the_summary_still_renders():
    status = replicated_status()
    del status["models"]
    with CannedGateway({"/admin/status": orjson.dumps(status)}) as gw:
        result = cortex(gw, "status")
    assert result.exit_code == 0 and "Replicas" in result.output, result.output


def test_top_rows_carry_the_models_replicas_and_waiting():
    rows = {(r.node, r.model): r for r in rows_from_status(replicated_status())}
    cells = dict(zip(COLUMNS, (c.plain for c in format_row(rows[("n1", NAMES)])), strict=True))
    assert (cells["model"], cells["replicas"], cells["waiting"]) == (NAMES, "2 (1..2)", "3")
    assert (rows[("n2", "solo")].replicas, rows[("n2", "solo")].waiting) == ("1 (0..1)", 0)


async def test_top_shows_the_replicas_and_waiting_columns():
    from cortex_cli.top.app import make_top_app

    with CannedGateway({"/admin/status": orjson.dumps(replicated_status())}) as gw:
        app = make_top_app(gw.url, interval=0.3)
        async with app.run_test(size=(160, 40)) as pilot:
            for _ in range(50):
                if app.rows:
                    break
                await pilot.pause(0.1)
            table = app.query_one("DataTable")
            labels = [str(c.label) for c in table.columns.values()]
            assert labels[2] == "kind" and labels[5] == "replicas" and labels[9] == "waiting"
            shown = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
            assert [NAMES, "n1", "chat", "loaded", "", "2 (1..2)", "2", "-", "0", "3"] == shown[0][:10]
            await pilot.press("q")


def test_status_and_top_say_each_models_kind():
    """A reranker loaded, an embedding model on disk: `cortex status` and `cortex top` name their kinds
    (issue 26, item 7); a model without one (an older gateway) reads as chat."""
    status = replicated_status()
    status["nodes"][0]["models"].append({"id": "rr", "status": "loaded", "kind": "rerank", "memory_mb": 5.0})
    status["nodes"][0]["available"] = ["emb"]
    status["nodes"][0]["disk"] = [{"id": "emb", "format": "hf", "path": "emb", "size_mb": 1.0, "kind": "embedding"}]
    rows = {(r.node, r.model): r for r in rows_from_status(status)}
    kind = lambda key: dict(zip(COLUMNS, (c.plain for c in format_row(rows[key])), strict=True))["kind"]  # noqa: E731
    assert (kind(("n1", "rr")), kind(("n1", "emb")), kind(("n1", NAMES))) == ("rerank", "embedding", "chat")
    with CannedGateway({"/admin/status": orjson.dumps(status)}) as gw:
        result = cortex(gw, "status")
    assert result.exit_code == 0, result.output
    models = result.output[result.output.index("Models"):result.output.index("Replicas")]
    row = next(line for line in models.splitlines() if "│ rr" in line)
    assert "rerank" in row
