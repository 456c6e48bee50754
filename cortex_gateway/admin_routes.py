"""The admin API the CLI drives: fleet status, load, unload, pin, unpin, pull, delete.

Behind the admin key when one is configured (`[auth] admin_keys`).
"""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from cortex_gateway import keys_routes
from cortex_gateway.auth import admin_auth
from cortex_gateway.catalog_routes import catalog
from cortex_gateway.config import set_pin
from cortex_gateway.fleet import Fleet, Node
from cortex_gateway.key_cache import KEYS
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.recent_requests import recent
from cortex_gateway.scaler import waiting_at
from cortex_gateway.shared_admin import SHARED_ADMIN
from cortex_gateway.shared_events import SHARED_EVENTS
from cortex_gateway.state import FLEET, LIFECYCLE, METRICS
from cortex_gateway.state_db import StateError
from cortex_gateway.status_stream import stream_status
from neuron.shared.client import NeuronError
from neuron.shared.errors import ApiError, bad_request
from neuron.shared.fields import req_str, require_object
from neuron.shared.http import json_response, read_json
from neuron.shared.protocol import BACKENDS, parse_devices
from neuron.shared.speculative import SpecConfig

log = logging.getLogger("cortex.gateway.admin_routes")


def _node_status(node: Node, fleet) -> dict:
    models = []
    for model, info in node.models.items():
        usage = fleet.usage_of(node.name, model)
        models.append({**info.to_dict(), "gateway_in_flight": usage.in_flight,
                       "queued": node.polled_load(model), "last_used": usage.last_used or None})
    return {"name": node.name, "endpoint": node.endpoint, "healthy": node.healthy, "draining": node.draining,
            "watched": node.watched, "in_flight": fleet.in_flight_on(node.name), "failures": node.failures,
            "last_error": node.last_error or None, "devices": [d.to_dict() for d in node.health.devices],
            "uptime_s": node.health.uptime_s or None, "models": models,
            "available": sorted(node.available), "pulls": [p.to_dict() for p in node.pulls],
            "disk": [m.to_dict() for m in sorted(node.available.values(), key=lambda m: m.id)],
            "decode_tps": {m.id: m.decode_tps for m in node.health.models},
            "slots": {m.id: {"running": m.running, "slots": m.slots} for m in node.health.models if m.slots},
            "drafts": _drafts(node)}


def _drafts(node: Node) -> dict:
    """Speculative decoding per model that has drafted since its load: draft tokens verified and kept (the
    neuron's cumulative counts, so `cortex top` shows the acceptance rate since the load)."""
    return {m.id: {"drafted": m.drafted, "accepted": m.draft_accepted} for m in node.health.models if m.drafted}


def _model_summaries(fleet: Fleet, lifecycle: Lifecycle) -> list[dict]:
    """Per model loaded or loading anywhere: its replicas (nodes up with it loaded), where it is loading, its
    floor and ceiling, and the gateway's in flight and waiting over its replicas, counted as the scaler counts
    them (`scaler.waiting_at`, plus the requests held in the gateway for a replica being loaded), so that
    `cortex status` shows the figures a scale-out is decided on."""
    held: dict[str, list[Node]] = {m: [] for m in lifecycle.cold.waiting()}  # waiting for room: held nowhere yet
    for node in fleet.nodes.values():
        for model in node.models:
            held.setdefault(model, []).append(node)
    return [_model_summary(model, nodes, fleet, lifecycle) for model, nodes in sorted(held.items())]


def _model_summary(model: str, nodes: list[Node], fleet: Fleet, lifecycle: Lifecycle) -> dict:
    """One model's figures; `waiting_for_room` (requests whose cold load waits for busy models to make room,
    and for how long) and `yielding` (nodes where it takes no new requests until swapped out) are the
    swap-aware queue's (docs/gateway.md#waiting-for-room)."""
    profile = lifecycle.config.models.get(model)
    serving = [n for n in nodes if n.healthy and n.has_loaded(model)]
    loading = [n.name for n in nodes if n.models[model].status.pending]
    waited_s, queued = lifecycle.cold.waiting().get(model, (0.0, 0))
    return {"id": model, "replicas": [n.name for n in serving], "loading": loading,
            "min_replicas": profile.min_replicas if profile else 0,
            "max_replicas": profile.max_replicas if profile else 1,
            "in_flight": sum(fleet.usage_of(n.name, model).in_flight for n in nodes),
            "waiting": sum(waiting_at(lifecycle, n, model) for n in serving) + lifecycle.held(model),
            "waiting_for_room": queued, "waited_s": round(waited_s, 1),
            "yielding": sorted(lifecycle.cold.claimed_on(model))}


async def status(request: web.Request) -> web.Response:
    """Everything the operator tools show; `?refresh=1` polls every node first (for progress displays)."""
    if request.query.get("refresh"):
        await request.config_dict[FLEET].poll_all()
    return json_response(await status_body(request.config_dict))


async def status_body(config) -> dict:
    """/admin/status's answer, from the gateway app's state (`config`: the app or a request's config_dict);
    also what `/admin/status/stream` sends."""
    fleet, lifecycle = config[FLEET], config[LIFECYCLE]
    return {
        "nodes": [_node_status(n, fleet) for n in fleet.nodes.values()],
        "pins": {m: sorted(n) for m, n in lifecycle.pins.items() if n},
        "strategy": lifecycle.config.strategy,
        "stats": config[METRICS].recent.all(),
        "events": await _events(config, 50),
        "models": _model_summaries(fleet, lifecycle),
        "api_keys": config[KEYS].keyed,  # the API needs a key (the console's playground asks one)
        "requests": recent(config),  # this gateway's last API requests, as its access log has them
    }


async def _events(config, limit: int) -> list[dict]:
    """The fleet's newest events: every gateway's on PostgreSQL (`shared_events`), else this one's."""
    if SHARED_EVENTS in config:
        return await config[SHARED_EVENTS].recent(limit)
    return list(config[FLEET].events)[-limit:]


async def models(request: web.Request) -> web.Response:
    """The merged catalog of `/v1/models`, behind the admin key: `cortex models` is an operator's command,
    and an admin key need not be a user key (`/v1/models` would refuse it)."""
    fleet, lifecycle = request.config_dict[FLEET], request.config_dict[LIFECYCLE]
    return json_response({"object": "list", "data": catalog(fleet, lifecycle)})


def _target(request_body) -> tuple[dict, str, str]:
    data = require_object(request_body)
    return data, req_str(data, "node"), req_str(data, "model")


def _node(request: web.Request, name: str) -> Node:
    node = request.config_dict[FLEET].nodes.get(name)
    if node is None:
        known = ", ".join(request.config_dict[FLEET].nodes) or "none"
        raise ApiError(404, "not_found_error", f"no node named {name!r}; the nodes are: {known}",
                       code="node_not_found", param="node")
    return node


async def load(request: web.Request) -> web.Response:
    data, node_name, model = _target(await read_json(request))
    node = _node(request, node_name)
    lifecycle = request.config_dict[LIFECYCLE]
    model = lifecycle.config.resolve_alias(model)
    backend = data.get("backend")
    if backend is not None and backend not in BACKENDS:
        raise bad_request(f"backend: expected one of {', '.join(BACKENDS)}", param="backend")
    speculative = SpecConfig.from_dict(data.get("speculative"))  # checked here as the node will check it
    try:
        info = await lifecycle.load(node, model, devices=parse_devices(data.get("devices")), backend=backend,
                                    speculative=speculative.to_dict() if speculative else None)
    except NeuronError as err:
        if err.code == "model_not_found":
            raise ApiError(404, "not_found_error", f"model {model!r} is not available on node {node.name!r}; "
                           "`cortex models` lists where each model can load", code="model_not_found",
                           param="model") from err
        raise err.for_client() from err
    if data.get("pin"):
        await _pin(request, node.name, model, True)
    return json_response({"node": node.name, "model": model, **info.to_dict()})


async def unload(request: web.Request) -> web.Response:
    _, node_name, model = _target(await read_json(request))
    node = _node(request, node_name)
    lifecycle = request.config_dict[LIFECYCLE]
    try:
        result = await lifecycle.unload(node, lifecycle.config.resolve_alias(model))
    except NeuronError as err:
        raise err.for_client() from err
    request.config_dict[FLEET].event("unload", node=node.name, model=model)
    return json_response({"node": node.name, **result})


async def pin(request: web.Request) -> web.Response:
    _, node_name, model = _target(await read_json(request))
    await _pin(request, _node(request, node_name).name, model, True)
    return json_response({"node": node_name, "model": model, "pinned": True})


async def unpin(request: web.Request) -> web.Response:
    _, node_name, model = _target(await read_json(request))
    await _pin(request, _node(request, node_name).name, model, False)
    return json_response({"node": node_name, "model": model, "pinned": False})


async def _pin(request: web.Request, node: str, model: str, pinned: bool) -> None:
    """Record the pin in the state database (every gateway applies it: `shared_admin`) and, when there is a
    models file, in it (comments kept)."""
    lifecycle = request.config_dict[LIFECYCLE]
    with _shared_state():
        await request.config_dict[SHARED_ADMIN].set_pin(node, model, pinned)
    path = lifecycle.config.models_path
    if path is not None:
        set_pin(path, model, node, pinned)
    request.config_dict[FLEET].event("pin" if pinned else "unpin", node=node, model=model)


async def pull(request: web.Request) -> web.Response:
    """Start a pull on a node (the only node when none is named); the CLI follows it through /admin/status."""
    data = require_object(await read_json(request))
    source = req_str(data, "source")
    node = _node(request, data["node"]) if data.get("node") else _only_node(request)
    try:
        state = await node.client.pull(source, wait=bool(data.get("wait")), timeout=24 * 3600)
    except NeuronError as err:
        raise err.for_client() from err
    request.config_dict[FLEET].event("pull", node=node.name, source=source)
    await request.config_dict[FLEET].poll_node(node)
    return json_response({"node": node.name, **state.to_dict()}, status=200 if state.finished else 202)


def _only_node(request: web.Request) -> Node:
    nodes = list(request.config_dict[FLEET].nodes.values())
    if len(nodes) != 1:
        raise bad_request(f"node: required when the fleet has {len(nodes)} nodes ({', '.join(n.name for n in nodes)})",
                          param="node", code="missing_field")
    return nodes[0]


async def delete(request: web.Request) -> web.Response:
    """Delete a model from a node's disk; the node refuses one that is loaded."""
    _, node_name, model = _target(await read_json(request))
    node = _node(request, node_name)
    try:
        result = await node.client.delete(model)
    except NeuronError as err:
        raise err.for_client() from err
    request.config_dict[FLEET].event("delete", node=node.name, model=model)
    await request.config_dict[FLEET].poll_node(node)
    return json_response({"node": node.name, **result})


async def drain(request: web.Request) -> web.Response:
    """No new placements on the node (requests and cold loads go elsewhere); what runs there finishes."""
    return await _set_draining(request, await read_json(request), True)


async def undrain(request: web.Request) -> web.Response:
    return await _set_draining(request, await read_json(request), False)


async def _set_draining(request: web.Request, body, draining: bool) -> web.Response:
    """Stored in the state database: every gateway drains the node (`shared_admin`)."""
    node = _node(request, req_str(require_object(body), "node"))
    with _shared_state():
        await request.config_dict[SHARED_ADMIN].set_drain(node.name, draining)
    fleet = request.config_dict[FLEET]
    fleet.event("drain" if draining else "undrain", node=node.name)
    return json_response({"node": node.name, "draining": draining, "in_flight": fleet.in_flight_on(node.name)})


@contextlib.contextmanager
def _shared_state():
    """A pin or a drain the state database cannot take is refused (every gateway must see it): a 503."""
    try:
        yield
    except StateError as exc:
        raise ApiError(503, "api_error", f"the state database is unreachable, so the change cannot be shared "
                       f"with the other gateways: {exc}; retry shortly", code="state_unavailable",
                       retry_after=5) from None


def add_routes(app: web.Application) -> None:
    """Mount the admin API under /admin, its key check applying to it alone (not the hot path)."""
    admin = web.Application(middlewares=[admin_auth])
    admin.router.add_get("/status", status)
    admin.router.add_get("/status/stream", stream_status)
    admin.router.add_get("/models", models)
    admin.router.add_post("/load", load)
    admin.router.add_post("/unload", unload)
    admin.router.add_post("/pin", pin)
    admin.router.add_post("/unpin", unpin)
    admin.router.add_post("/pull", pull)
    admin.router.add_post("/delete", delete)
    admin.router.add_post("/drain", drain)
    admin.router.add_post("/undrain", undrain)
    keys_routes.add_routes(admin)  # /admin/keys
    app.add_subapp("/admin", admin)
