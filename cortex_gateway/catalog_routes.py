"""What the fleet offers: the merged `/v1/models` and the gateway's `/health`."""

from __future__ import annotations

import orjson
from aiohttp import web

from cortex_gateway import allow_list
from cortex_gateway.anthropic.errors import render_anthropic
from cortex_gateway.errors import unknown_model
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.state import FLEET, LIFECYCLE, TENANT
from neuron.shared.errors import render_openai
from neuron.shared.http import json_response


def catalog(fleet: Fleet, lifecycle: Lifecycle) -> list[dict]:
    """Every model any node has loaded or can load, plus the profiles and aliases. Each says its `kind`
    (generation, embedding, rerank, ...: `neuron.shared.protocol.ModelKind`) when the nodes that list it
    agree on one, else null (a profile no node lists yet)."""
    entries: dict[str, dict] = {}
    kinds: dict[str, set] = {}

    def entry(model: str) -> dict:
        return entries.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": "cortex",
                                          "kind": None, "loaded_on": [], "loadable_on": [], "pinned_on": []})

    for node in fleet.nodes.values():
        for model, info in node.models.items():
            if node.has_loaded(model):
                entry(model)["loaded_on"].append(node.name)
                kinds.setdefault(model, set()).add(info.kind)
        for model, available in node.available.items():
            entry(model)["loadable_on"].append(node.name)
            kinds.setdefault(model, set()).add(available.kind)
    for model, found in kinds.items():
        if len(found) == 1:
            entries[model]["kind"] = str(found.pop())
    config = lifecycle.config
    for model, profile in config.models.items():
        e = entry(model)
        if profile.path or profile.source:
            e["loadable_on"] = sorted(set(e["loadable_on"]) | set(fleet.nodes))
    for model, nodes in lifecycle.pins.items():
        if nodes:
            entry(model)["pinned_on"] = sorted(nodes)
    for alias, target in config.aliases.items():
        entries[alias] = {**entry(target), "id": alias, "alias_of": target}
    return sorted(entries.values(), key=lambda e: e["id"])


class CatalogCache:
    """The catalog and its OpenAI `/v1/models` body, built again only when what they are made of changed:
    a node's models or listing (the fleet's catalog version), the pins, or the config. Building one reads
    every node, so a fleet of a thousand would pay that on every request otherwise."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self.entries: list[dict] = []
        self._body: bytes | None = None

    def get(self, fleet: Fleet, lifecycle: Lifecycle) -> list[dict]:
        key = (fleet.catalog_version, lifecycle.config,  # compared by identity first: cheap while the same
               tuple(sorted((m, tuple(sorted(n))) for m, n in lifecycle.pins.items() if n)))
        if key != self._key:
            self._key, self.entries, self._body = key, catalog(fleet, lifecycle), None
        return self.entries

    def body(self, fleet: Fleet, lifecycle: Lifecycle) -> bytes:
        """The `/v1/models` answer for a key that may see every model, serialised once per version."""
        entries = self.get(fleet, lifecycle)
        if self._body is None:
            self._body = orjson.dumps({"object": "list", "data": entries})
        return self._body


CATALOG = web.AppKey("catalog_cache", CatalogCache)


def _cache(app: web.Application) -> CatalogCache:
    return app[CATALOG] if CATALOG in app else CatalogCache()


def cached_catalog(app: web.Application) -> list[dict]:
    """The catalog as the app's cache holds it (built again only on change): what /metrics reads at each
    scrape, which would otherwise walk every node every scrape."""
    return _cache(app).get(app[FLEET], app[LIFECYCLE])


def visible_catalog(request: web.Request) -> list[dict]:
    """The catalog as the request's key may see it (its allow-list applied)."""
    app = request.app
    return allow_list.visible(request.get(TENANT), _cache(app).get(app[FLEET], app[LIFECYCLE]),
                              app[LIFECYCLE].config.resolve_alias)


async def list_models(request: web.Request) -> web.Response:
    tenant = request.get(TENANT)
    if not _anthropic(request) and (tenant is None or tenant.settings.models is None):
        app = request.app
        return web.Response(body=_cache(app).body(app[FLEET], app[LIFECYCLE]), content_type="application/json")
    models = visible_catalog(request)
    if _anthropic(request):  # the Anthropic SDK's models.list
        data = [anthropic_model(m) for m in models]
        return json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})
    return json_response({"object": "list", "data": models})


async def get_model(request: web.Request) -> web.Response:
    """`models.retrieve` in both SDKs: the catalog entry, in the dialect the request speaks (a model the key
    may not use answered as the provider answers one that does not exist)."""
    model_id = request.match_info["model"]
    found = next((m for m in visible_catalog(request) if m["id"] == model_id), None)
    if found is None:
        tenant = request.get(TENANT)
        limited = tenant is not None and tenant.settings.models is not None
        err = allow_list.not_allowed(model_id) if limited else unknown_model(model_id)
        return render_anthropic(err) if _anthropic(request) else render_openai(err)
    return json_response(anthropic_model(found) if _anthropic(request) else found)


def _anthropic(request: web.Request) -> bool:
    return "anthropic-version" in request.headers


def anthropic_model(entry: dict) -> dict:
    return {"type": "model", "id": entry["id"], "display_name": entry["id"], "created_at": "1970-01-01T00:00:00Z"}


async def health(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    total, healthy = len(fleet.nodes), len(fleet.healthy_nodes())
    status = "ok" if total and healthy == total else "degraded" if healthy else "down"
    return json_response({"status": status, "nodes": {"healthy": healthy, "total": total}},
                         status=503 if status == "down" else 200)


API = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/images/generations",
       "/v1/audio/transcriptions", "/v1/messages", "/v1/responses", "/v1/models"]  # what GET / lists


async def root(_request: web.Request) -> web.Response:
    """`GET /` (and HEAD): Claude Code and others check the base URL answers before they start."""
    return json_response({"name": "cortex", "api": API, "console": "/ui"})


def add_routes(app: web.Application) -> None:
    app[CATALOG] = CatalogCache()
    app.router.add_get("/", root)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
