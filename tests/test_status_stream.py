"""`GET /admin/status/stream` (the web console's live view) against a real gateway over a real neuron: the
status at once, then each change pushed (an unload, a node killed) with nothing asked again; behind the
admin key; and a stopping gateway ends its streams rather than waiting on them."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.helpers import http_json, one_node_fleet

ADMIN = "stream-admin-key"
AUTH = f'[auth]\nadmin_keys = ["{ADMIN}"]'
STEP = 60.0  # a deadline for one step, so a regression fails instead of hanging


@pytest.fixture
def fleet(tmp_path, models_dir):
    with one_node_fleet(tmp_path, models_dir, load=("tiny-gguf",), extra_toml=AUTH) as (gateway, neuron, _):
        yield gateway, neuron


async def statuses(response: aiohttp.ClientResponse):
    """Each `status` event's body; a heartbeat comment or a blank line yields nothing."""
    kind = None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:") and kind == "status":
            yield orjson.loads(line[5:])


async def until(events, check) -> dict:
    async with asyncio.timeout(STEP):
        async for status in events:
            if check(status):
                return status
    raise AssertionError("the stream ended before the change came")


def models_on(status: dict, node: str) -> set[str]:
    return {m["id"] for n in status["nodes"] if n["name"] == node for m in n["models"]}


def node_up(status: dict, node: str) -> bool:
    return any(n["healthy"] for n in status["nodes"] if n["name"] == node)


async def test_the_stream_pushes_each_change_of_the_fleet(fleet):
    gateway, neuron = fleet
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/admin/status/stream",
                                                               headers=headers) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        events = statuses(response)
        first = await until(events, lambda s: True)
        _, polled = await asyncio.to_thread(http_json, "GET", gateway.url + "/admin/status", headers=headers)
        assert first.keys() == polled.keys(), "the stream sends what /admin/status answers"
        assert models_on(first, "n1") == {"tiny-gguf"} and node_up(first, "n1")
        status, body = await asyncio.to_thread(http_json, "POST", gateway.url + "/admin/unload",
                                               {"node": "n1", "model": "tiny-gguf"}, headers=headers)
        assert status == 200, body
        gone = await until(events, lambda s: not models_on(s, "n1"))
        assert any(e["kind"] == "unload" for e in gone["events"]), gone["events"]
        neuron.kill()
        down = await until(events, lambda s: not node_up(s, "n1"))
        assert any(e["kind"] == "node_down" for e in down["events"])
        gateway.terminate()  # a stopping gateway ends the stream: the reader sees its end, not a timeout
        async with asyncio.timeout(STEP):
            async for _ in events:
                pass


def test_the_stream_needs_the_admin_key(fleet):
    gateway, _ = fleet
    for key in (None, "not-the-admin-key"):
        status, body = http_json("GET", gateway.url + "/admin/status/stream",
                                 headers={"Authorization": f"Bearer {key}"} if key else None)
        assert status == 401 and "admin key" in body["error"]["message"], body
