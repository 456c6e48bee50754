"""Polls that cost nothing when nothing changed: ETags on the neuron's polled routes, 304s the gateway keeps.

In process: a scripted node built from the protocol's types and the neuron's own `conditional` answers
(with ETags, or without, as a neuron older than them), polled by the gateway's real `Fleet`. Then a real
`cortex neuron` answering If-None-Match, and a real gateway whose /v1/models follows a load and an unload.
"""

from __future__ import annotations

import contextlib
import urllib.request

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cortex_gateway.catalog_routes import CatalogCache
from cortex_gateway.config import GatewayConfig, NeuronSpec
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from neuron.server import conditional
from neuron.shared.protocol import AvailableModel, DeviceInfo, Health, ModelInfo, ModelLoad
from tests.helpers import http_json, start_gateway, start_neuron, wait_for


class ScriptedNode:
    """/health, /models and /models/available of a node whose models the test sets; counts what it answered."""

    def __init__(self, etags: bool):
        self.etags = etags
        self.loaded = ["a", "b"]
        self.listed = ["a", "b", "c"]
        self.answered: list[tuple[str, int]] = []  # (path, status)

    def _models(self) -> dict:
        return {"models": [ModelInfo(m, memory_mb=10).to_dict() for m in self.loaded], "pulls": []}

    def _available(self) -> dict:
        return {"models": [AvailableModel(m, "gguf", m, 10.0).to_dict() for m in self.listed]}

    def _health(self) -> dict:
        tags = {"models_etag": conditional.tag_of(orjson.dumps(self._models())),
                "available_etag": conditional.tag_of(orjson.dumps(self._available()))} if self.etags else {}
        return Health("ok", "n", 1.0, [DeviceInfo("cpu", total_mb=1000, free_mb=900)],
                      [ModelLoad(m) for m in self.loaded], **tags).to_dict()

    def app(self) -> web.Application:
        def route(path: str, build):
            async def handler(request: web.Request) -> web.Response:
                payload = build()
                resp = (conditional.json_answer(request, payload) if self.etags
                        else web.json_response(payload))
                self.answered.append((path, resp.status))
                return resp
            return handler

        app = web.Application()
        for path, build in (("/health", self._health), ("/models", self._models),
                            ("/models/available", self._available)):
            app.router.add_get(path, route(path, build))
        return app


@contextlib.asynccontextmanager
async def polled(etags: bool):
    node = ScriptedNode(etags)
    async with TestServer(node.app(), host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield node, Fleet([NeuronSpec("n", str(server.make_url("")))], session)


async def test_unchanged_node_answers_one_304_and_the_gateway_keeps_its_state():
    async with polled(etags=True) as (node, fleet):
        await fleet.poll_all()
        n = fleet.nodes["n"]
        models, available, version = n.models, n.available, fleet.catalog_version
        assert set(models) == {"a", "b"} and set(available) == {"a", "b", "c"} and n.healthy
        node.answered.clear()
        await fleet.poll_all()
        assert node.answered == [("/health", 304)]  # /models and /models/available not even asked
        assert n.models is models and n.available is available and fleet.catalog_version == version
        assert n.health.uptime_s > 1.0  # advanced by the time passed, as the node would have
        assert [x.name for x in fleet.nodes_with("a")] == ["n"]


async def test_a_change_is_seen_at_the_next_poll():
    async with polled(etags=True) as (node, fleet):
        await fleet.poll_all()
        version = fleet.catalog_version
        node.loaded = ["b", "c"]
        node.answered.clear()
        await fleet.poll_all()
        n = fleet.nodes["n"]
        assert set(n.models) == {"b", "c"} and fleet.catalog_version > version
        assert ("/models", 200) in node.answered and ("/models/available", 200) not in node.answered
        assert fleet.nodes_with("a") == [] and [x.name for x in fleet.nodes_with("c")] == ["n"]
        node.listed = ["d"]
        await fleet.poll_all()
        assert set(n.available) == {"d"}


async def test_a_node_without_etags_is_asked_in_full_every_time():
    async with polled(etags=False) as (node, fleet):
        await fleet.poll_all()
        node.answered.clear()
        node.loaded = ["c"]
        await fleet.poll_all()
        assert sorted(node.answered) == [("/health", 200), ("/models", 200), ("/models/available", 200)]
        n = fleet.nodes["n"]
        assert set(n.models) == {"c"} and n.healthy and not n.client.held
        assert [x.name for x in fleet.nodes_with("c")] == ["n"] and fleet.nodes_with("a") == []


def get(url: str, etag: str | None = None) -> tuple[int, str | None, bytes]:
    req = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("ETag"), resp.read()
    except urllib.error.HTTPError as err:  # urllib raises on a 304
        return err.code, err.headers.get("ETag"), err.read()


@pytest.mark.parametrize("path", ["/models", "/models/available"])
def test_a_real_neuron_answers_if_none_match_with_304(neuron, path):
    status, etag, body = get(neuron.url + path)
    assert status == 200 and etag and body
    status, again, body = get(neuron.url + path, etag)
    assert status == 304 and again == etag and body == b""
    assert get(neuron.url + path, '"stale"')[0] == 200


def test_a_real_neurons_health_names_the_other_tags_and_answers_304(neuron):
    status, etag, body = get(neuron.url + "/health")
    health = orjson.loads(body)
    assert status == 200 and etag
    assert health["models_etag"] == get(neuron.url + "/models")[1]
    assert health["available_etag"] == get(neuron.url + "/models/available")[1]
    # A GPU's utilisation and temperature are in the tag and move between two calls: a 304 only on the CPU.
    if all(d["kind"] == "cpu" for d in health["devices"]):
        assert get(neuron.url + "/health", etag)[:2] == (304, etag)


def test_the_gateways_catalog_follows_a_load_and_an_unload(tmp_path, models_dir):
    def loaded_on() -> list[str]:
        entries = {e["id"]: e for e in http_json("GET", gateway.url + "/v1/models")[1]["data"]}
        return entries["tiny-gguf"]["loaded_on"]

    with start_neuron(tmp_path, models_dir) as neuron, start_gateway(tmp_path, {"n1": neuron.url}) as gateway:
        assert loaded_on() == []
        assert http_json("POST", gateway.url + "/admin/load", {"node": "n1", "model": "tiny-gguf"})[0] == 200
        assert loaded_on() == ["n1"]
        assert http_json("POST", neuron.url + "/models/unload", {"model": "tiny-gguf"})[0] == 200  # behind its back
        wait_for(lambda: loaded_on() == [], what="the unload seen by the gateway's poll")
        assert http_json("POST", neuron.url + "/models/load", {"model": "tiny-gguf"})[0] == 200
        wait_for(lambda: loaded_on() == ["n1"], what="the load seen by the gateway's poll")


def test_the_catalog_is_built_again_only_when_a_listing_or_a_pin_changed():
    specs = [NeuronSpec(name, "http://127.0.0.1:9") for name in ("a", "b")]
    fleet = Fleet(specs, session=None)
    lifecycle = Lifecycle(GatewayConfig(neurons=specs), fleet, GatewayMetrics())
    fleet.nodes["a"].models = {"m": ModelInfo("m")}
    cache = CatalogCache()
    first = cache.get(fleet, lifecycle)
    assert cache.get(fleet, lifecycle) is first and cache.body(fleet, lifecycle) is cache.body(fleet, lifecycle)
    assert [e["loaded_on"] for e in first] == [["a"]]
    fleet.nodes["b"].models = {"m": ModelInfo("m"), "k": ModelInfo("k")}  # as a poll replaces it
    assert [(e["id"], e["loaded_on"]) for e in cache.get(fleet, lifecycle)] == [("k", ["b"]), ("m", ["a", "b"])]
    assert orjson.loads(cache.body(fleet, lifecycle))["data"] == cache.get(fleet, lifecycle)
    lifecycle.pins["m"] = {"b"}
    assert next(e for e in cache.get(fleet, lifecycle) if e["id"] == "m")["pinned_on"] == ["b"]
    assert {n.name for n in fleet.nodes_with("m")} == {"a", "b"} and fleet.nodes_with("x") == []
