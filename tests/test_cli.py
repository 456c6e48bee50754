"""The operator commands against a real gateway and neuron (click's runner, Textual's pilot)."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from cortex_cli.main import cli
from tests.helpers import free_port, http_json, one_node_fleet

MODELS_TOML = "# fleet models, hand-written\n[[models]]\nid = \"tiny-gguf\"  # keep this comment\npriority = 10\n"


@pytest.fixture()
def fleet(tmp_path, models_dir):
    with one_node_fleet(tmp_path, models_dir, "--cpu-memory-mb", "4000", name="beast",
                        models_toml=MODELS_TOML) as (gateway, neuron, _):
        yield gateway, neuron, tmp_path


def cortex(*args, gateway=None):
    env = {"CORTEX_GATEWAY": gateway.url} if gateway else {}
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "140", **env}, catch_exceptions=False)


def test_load_with_pin_status_models_and_unload(fleet):
    gateway, _, tmp = fleet
    result = cortex("load", "beast", "tiny-gguf", "--pin", gateway=gateway)
    assert result.exit_code == 0, result.output
    assert "loaded tiny-gguf on beast (llama.cpp, cpu):" in result.output and "MiB in" in result.output
    assert "pinned" in result.output
    text = (tmp / "models.toml").read_text()
    assert "# keep this comment" in text and 'pinned_on = ["beast"]' in text

    result = cortex("status", gateway=gateway)
    assert result.exit_code == 0
    assert "beast" in result.output and "up" in result.output and "tiny-gguf" in result.output
    data = json.loads(cortex("status", "--json", gateway=gateway).output)
    model = next(m for m in data["nodes"][0]["models"] if m["id"] == "tiny-gguf")
    assert model["status"] == "loaded" and data["pins"] == {"tiny-gguf": ["beast"]}

    result = cortex("models", gateway=gateway)
    assert "tiny-hf" in result.output and "tiny-gguf" in result.output
    assert cortex("unload", "beast", "tiny-gguf", gateway=gateway).output.strip() == "unloaded tiny-gguf from beast"
    assert "tiny-gguf" not in {m["id"] for m in json.loads(cortex("status", "--json", gateway=gateway).output)
                               ["nodes"][0]["models"]}


@pytest.mark.parametrize("args, message", [
    (("load", "ghost", "tiny-gguf"), "no node named 'ghost'; the nodes are: beast"),
    (("load", "beast", "no-such-model"), "model 'no-such-model' is not available on node 'beast'"),
    (("unload", "beast", "tiny-hf"), "not loaded"),
    (("load", "beast", "tiny-gguf", "--devices", "x"), "expected GPU indices"),
])
def test_clear_errors(fleet, args, message):
    result = cortex(*args, gateway=fleet[0])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_model_that_does_not_fit(tmp_path, models_dir):
    with one_node_fleet(tmp_path, models_dir, "--cpu-memory-mb", "20", name="small") as (gateway, _, _):
        result = cortex("load", "small", "tiny-gguf", gateway=gateway)
        assert result.exit_code == 1 and "needs about" in result.output and "MiB is free" in result.output


def test_unreachable_gateway_is_one_clear_line():
    result = cortex("status", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the gateway" in lines[0]


async def wait_until(pilot, predicate, timeout=20.0):
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not reached in the dashboard")


async def test_top_dashboard_keys_and_a_node_going_down(fleet):
    from cortex_cli.top.app import make_top_app

    gateway, neuron, _ = fleet
    assert http_json("POST", gateway.url + "/admin/load", {"node": "beast", "model": "tiny-gguf"})[0] == 200
    app = make_top_app(gateway.url, interval=0.3)
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_until(pilot, lambda: any(r.status == "loaded" for r in app.rows))
        assert {r.model for r in app.rows} >= {"tiny-gguf", "tiny-hf", "tiny-short"}

        await pilot.press("s")
        assert app.sort_key == "node"
        await pilot.press("slash", *"tiny-hf", "enter")
        await wait_until(pilot, lambda: [r.model for r in app.rows] == ["tiny-hf"])
        await pilot.press("slash", *["backspace"] * 7, "enter")
        await wait_until(pilot, lambda: len(app.rows) >= 3)

        loaded = [r.model for r in app.rows]
        app.query_one("DataTable").move_cursor(row=loaded.index("tiny-gguf"))
        await pilot.press("p")
        await pilot.press("y")
        await wait_until(pilot, lambda: http_json("GET", gateway.url + "/admin/status")[1]["pins"]
                         .get("tiny-gguf") == ["beast"])
        await wait_until(pilot, lambda: any(r.model == "tiny-gguf" and r.pinned for r in app.rows))
        app.query_one("DataTable").move_cursor(row=[r.model for r in app.rows].index("tiny-gguf"))
        await pilot.press("u")
        await pilot.press("n")  # declined: nothing happens
        await pilot.pause(0.5)
        assert any(r.model == "tiny-gguf" and r.status == "loaded" for r in app.rows)
        await pilot.press("u")
        await pilot.press("y")
        await wait_until(pilot, lambda: any(r.model == "tiny-gguf" and r.status == "available" for r in app.rows))

        panel = app.query_one("#nodes")
        neuron.kill()
        await wait_until(pilot, lambda: "beast        down" in panel.plain)  # what the operator sees
        gateway.terminate()
        await wait_until(pilot, lambda: "gateway unreachable" in panel.plain)
        assert "beast" in panel.plain, "the last picture stays on screen"
        assert app.is_running
        await pilot.press("q")
    await asyncio.sleep(0)


def test_top_shows_a_pull_under_way_and_a_failed_one():
    from cortex_cli.top.data import rows_from_status

    status = {"nodes": [{"name": "n1", "models": [], "available": [], "pulls": [
        {"source": "o/r:Q4_K_M", "id": "r-q4_k_m", "phase": "downloading", "done_bytes": 25, "total_bytes": 100},
        {"source": "o/gated", "phase": "failed", "error": "gated"},
        {"source": "o/done", "id": "done", "phase": "done"}]}], "pins": {}}
    rows = {r.model: r.status for r in rows_from_status(status)}
    assert rows == {"r-q4_k_m": "pulling 25%", "o/gated": "failed"}


def test_neuron_with_gpus_the_machine_lacks_says_so_at_start(tmp_path):
    """`--gpus 0,1` on a machine without them must not fall back to the CPU silently."""
    import subprocess

    from tests.helpers import CORTEX, free_port

    # GPUs no machine has, so the test means the same with or without a GPU here.
    result = subprocess.run(CORTEX + ["neuron", "--gpus", "97,98", "--listen", f"127.0.0.1:{free_port()}",
                                      "--models-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--gpus 97,98: this machine has no NVIDIA GPU" in result.stderr or "no GPU 97, 98" in result.stderr, \
        result.stderr


def test_drain_wait_status_and_undrain(fleet):
    gateway, _, _ = fleet
    drained = cortex("drain", "beast", "--wait", gateway=gateway)
    assert drained.exit_code == 0 and "beast is draining" in drained.output and "ready for maintenance" in \
        drained.output, drained.output
    status = cortex("status", gateway=gateway)
    assert "draining (0 in flight)" in status.output, status.output
    refused = http_json("POST", gateway.url + "/v1/chat/completions",
                        {"model": "tiny-gguf", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert refused[0] == 503 and "beast draining" in refused[1]["error"]["message"], refused
    back = cortex("undrain", "beast", gateway=gateway)
    assert back.exit_code == 0 and "takes new requests again" in back.output
    status = cortex("status", "--json", gateway=gateway)
    assert json.loads(status.output)["nodes"][0]["draining"] is False
