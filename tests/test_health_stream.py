"""The node's health as a stream (issue 25, item 3): pushed on change, a heartbeat otherwise, polls the fallback.

A real `cortex neuron` writes the stream and the gateway's own client reads it; then a real gateway whose
poll interval is longer than the test follows loads and unloads made on the neuron behind its back (only
the stream can tell it); a node killed with SIGKILL is marked down and, restarted, watched again; and a
node older than the stream (an app without the route) is left to the poller.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cortex_gateway.config import NeuronSpec
from cortex_gateway.fleet import Fleet
from cortex_gateway.node_watch import NodeWatch
from neuron.shared.client import NeuronClient, NeuronError
from neuron.shared.health_stream import PATH
from neuron.shared.protocol import Health
from tests.helpers import http_json, start_gateway, start_neuron, wait_for


async def _next(events, want_health: bool) -> Health | None:
    """The stream's next health event (or heartbeat, with `want_health` False), skipping the other kind."""
    while True:
        event = await events.__anext__()
        if (event is not None) == want_health:
            return event


async def test_neuron_streams_its_health_on_change_and_heartbeats_between(tmp_path, models_dir):
    with start_neuron(tmp_path, models_dir) as node:
        async with aiohttp.ClientSession() as session:
            events = NeuronClient(node.url, session).watch_health(heartbeat_s=0.1)
            first = await _next(events, True)
            assert first.name == "n1" and first.models == [] and first.models_etag and first.available_etag
            assert await _next(events, False) is None  # nothing changed: a heartbeat
            status, _ = await asyncio.to_thread(http_json, "POST", node.url + "/models/load",
                                                {"model": "tiny-gguf"})
            assert status == 200
            loaded = await _next(events, True)
            while not loaded.load_of("tiny-gguf"):  # the load's own progress may come first
                loaded = await _next(events, True)
            assert loaded.models_etag != first.models_etag
            await asyncio.to_thread(http_json, "POST", node.url + "/models/unload", {"model": "tiny-gguf"})
            gone = await _next(events, True)
            while gone.load_of("tiny-gguf"):
                gone = await _next(events, True)
            node.terminate()  # a stopping node ends its streams: the reader learns at once, not at a timeout
            with pytest.raises((StopAsyncIteration, NeuronError)):
                while True:
                    await events.__anext__()


async def test_a_bad_heartbeat_is_a_clear_400(tmp_path, models_dir):
    with start_neuron(tmp_path, models_dir) as node:
        async with aiohttp.ClientSession() as session:
            for bad in ("0", "fast", "1e9"):
                async with session.get(f"{node.url}{PATH}?heartbeat_s={bad}") as resp:
                    body = await resp.json()
                    assert resp.status == 400, body
                    assert "heartbeat_s" in body["error"]["message"] and body["error"]["param"] == "heartbeat_s"


def _node_status(gateway, name: str = "n1") -> dict:
    status, body = http_json("GET", gateway.url + "/admin/status")
    assert status == 200, body
    return next(n for n in body["nodes"] if n["name"] == name)


def _loaded_there(gateway, model: str) -> bool:
    return any(m["id"] == model and m["status"] == "loaded" for m in _node_status(gateway)["models"])


def test_gateway_follows_changes_made_behind_its_back_without_polling(tmp_path, models_dir):
    """The poll interval (an hour) is longer than the test: whatever the gateway learns, the stream told it."""
    with start_neuron(tmp_path, models_dir) as node, \
            start_gateway(tmp_path, {"n1": node.url}, poll_interval_s=3600) as gateway:
        wait_for(lambda: _node_status(gateway)["watched"], what="the gateway to watch n1's stream")
        assert http_json("POST", node.url + "/models/load", {"model": "tiny-gguf"})[0] == 200
        wait_for(lambda: _loaded_there(gateway, "tiny-gguf"), what="the load to reach the gateway")
        status, body = http_json("POST", gateway.url + "/v1/chat/completions",
                                 {"model": "tiny-gguf", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 2})
        assert status == 200, body
        assert http_json("POST", node.url + "/models/unload", {"model": "tiny-gguf"})[0] == 200
        wait_for(lambda: not _loaded_there(gateway, "tiny-gguf"), what="the unload to reach the gateway")


def test_a_killed_node_is_marked_down_and_watched_again_when_back(tmp_path, models_dir):
    node = start_neuron(tmp_path, models_dir)
    with node, start_gateway(tmp_path, {"n1": node.url}) as gateway:
        wait_for(lambda: _node_status(gateway)["watched"], what="the gateway to watch n1's stream")
        node.kill()
        wait_for(lambda: not _node_status(gateway)["healthy"], what="n1 marked down")
        assert not _node_status(gateway)["watched"]
        with start_neuron(tmp_path, models_dir, port=node.port):
            wait_for(lambda: (s := _node_status(gateway))["healthy"] and s["watched"], what="n1 watched again")


async def test_a_node_without_the_stream_is_left_to_the_poller():
    """A node older than the stream answers it 404: NodeWatch gives it back to the poller, which polls it."""
    async def health(_request: web.Request) -> web.Response:
        return web.json_response(Health("ok", "old", 1.0).to_dict())

    async def listing(_request: web.Request) -> web.Response:
        return web.json_response({"models": [], "pulls": []})

    app = web.Application()
    app.router.add_get("/health", health)
    for path in ("/models", "/models/available"):
        app.router.add_get(path, listing)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        fleet = Fleet([NeuronSpec("old", str(server.make_url("")))], session)
        node = fleet.nodes["old"]
        with pytest.raises(NeuronError) as refused:
            await NodeWatch(fleet, 0.1)._follow(node)
        assert refused.value.status == 404 and not node.watched
        await fleet._poll_some([node])  # the poller's slice does poll it
        assert node.healthy and node.health.name == "old"
