"""`/admin/status`'s per-model summary (`models`): replicas, floor and ceiling, in flight and waiting, as
`cortex status` and `cortex top` show them. In process, over fake neurons."""

from __future__ import annotations

import asyncio

from cortex_gateway.config import ModelProfile
from tests.gateway_inprocess import OPENAI, body, open_stream, rest, wait


async def test_a_model_on_two_nodes_is_one_summary_with_two_replicas_and_its_waiting(gateway_over, fakes):
    n1 = await fakes.start("n1", loaded={"m": 100.0})
    n2 = await fakes.start("n2", loaded={"m": 100.0, "solo": 50.0})
    n1.queue_depth["m"] = 3  # three requests from other clients wait on n1
    gw = await gateway_over(n1, n2, models={"m": ModelProfile("m", min_replicas=1, max_replicas=2)})
    held = [n1.hold_headers(), n2.hold_headers()]  # whichever node the stream goes to, it is held there
    task = asyncio.ensure_future(open_stream(gw, OPENAI, "m"))
    await wait_any(*(cue.arrived for cue in held))
    resp = await gw.client.get("/admin/status", params={"refresh": "1"})
    summary = {m["id"]: m for m in (await resp.json())["models"]}
    assert summary["m"] == {"id": "m", "replicas": ["n1", "n2"], "loading": [], "min_replicas": 1,
                            "max_replicas": 2, "in_flight": 1, "waiting": 3, "waiting_for_room": 0,
                            "waited_s": 0.0, "yielding": []}
    assert summary["solo"]["replicas"] == ["n2"]
    assert (summary["solo"]["min_replicas"], summary["solo"]["max_replicas"]) == (0, 1), "no profile: 0..1"
    catalog = (await (await gw.client.get("/v1/models")).json())["data"]
    assert [e["loaded_on"] for e in catalog if e["id"] == "m"] == [["n1", "n2"]], "listed once"
    fakes.release_all()
    await rest(await task)


async def test_a_model_being_loaded_shows_where_with_no_replica_yet(gateway_over, fakes):
    n1 = await fakes.start("n1", available={"cold": 10.0})
    gw = await gateway_over(n1)
    load = n1.hold_loads()
    task = asyncio.ensure_future(gw.client.post("/v1/chat/completions", json=body("cold", stream=False)))
    await wait(load.arrived)
    resp = await gw.client.get("/admin/status", params={"refresh": "1"})
    (summary,) = (await resp.json())["models"]
    assert (summary["id"], summary["replicas"], summary["loading"]) == ("cold", [], ["n1"])
    load.release()
    assert (await task).status == 200


async def wait_any(*flags: asyncio.Event) -> None:
    """Until one of `flags` is set (within the tier's deadline)."""
    waits = [asyncio.ensure_future(wait(f)) for f in flags]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    for d in done:
        d.result()
