"""The gateway's public OpenAI routes: the merged catalogue, inference, health."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.fleet import Fleet, Node
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.proxy import (JSON_HEADERS, ClientGone, Record, RetryElsewhere, fetch_json, open_client_stream,
                                  open_upstream_stream, relay_stream, upstream_api_error)
from neuron.errors import ApiError, bad_request, json_response
from neuron.sse import DONE, KEEPALIVE, error_event

FLEET = web.AppKey("fleet", Fleet)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", GatewayMetrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def catalogue(fleet: Fleet, lifecycle: Lifecycle) -> list[dict]:
    """Every model any node has loaded or can load, plus the profiles and aliases."""
    entries: dict[str, dict] = {}

    def entry(model: str) -> dict:
        return entries.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": "cortex",
                                          "loaded_on": [], "loadable_on": [], "pinned_on": []})

    for node in fleet.nodes.values():
        for model, info in node.models.items():
            if info.get("status") == "loaded":
                entry(model)["loaded_on"].append(node.name)
        for model in node.available:
            entry(model)["loadable_on"].append(node.name)
    config = lifecycle.config
    for model, profile in config.models.items():
        e = entry(model)
        if profile.path or profile.source:
            e["loadable_on"] = sorted(set(e["loadable_on"]) | {n for n in fleet.nodes})
    for model, nodes in lifecycle.pins.items():
        if nodes:
            entry(model)["pinned_on"] = sorted(nodes)
    for alias, target in config.aliases.items():
        entries[alias] = {**entry(target), "id": alias, "alias_of": target}
    return sorted(entries.values(), key=lambda e: e["id"])


async def list_models(request: web.Request) -> web.Response:
    app = request.app
    return json_response({"object": "list", "data": catalogue(app[FLEET], app[LIFECYCLE])})


async def health(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    total, healthy = len(fleet.nodes), len(fleet.healthy_nodes())
    status = "ok" if total and healthy == total else "degraded" if healthy else "down"
    return json_response({"status": status, "nodes": {"healthy": healthy, "total": total}},
                         status=503 if status == "down" else 200)


def _parse_head(body: bytes) -> tuple[dict, str, bool]:
    """The two fields the gateway reads: `model` and `stream`."""
    if not body:
        raise bad_request("request body: expected JSON, got an empty body", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("request body: expected a JSON object", code="invalid_body")
    model, stream = data.get("model"), data.get("stream", False)
    if not isinstance(model, str) or not model:
        raise bad_request("model: required, a model id from GET /v1/models", param="model", code="missing_field")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("stream: expected true or false", param="stream")
    return data, model, bool(stream)


def _upstream_body(data: dict, body: bytes, requested: str, upstream_id: str) -> bytes:
    """Pass the bytes through untouched unless the node knows the model by another name."""
    if requested == upstream_id:
        return body
    return orjson.dumps({**data, "model": upstream_id})


class OpenAIDialect:
    """Pass-through: the neurons speak OpenAI, so bytes go back as they came."""

    keepalive = KEEPALIVE

    def error_event(self, err: ApiError) -> bytes:
        return error_event(err) + DONE

    def json_response(self, status: int, raw: bytes) -> web.Response:
        return web.Response(body=raw, status=status, headers=JSON_HEADERS)

    async def relay(self, upstream, client_stream: web.StreamResponse, rec: Record) -> None:
        await relay_stream(upstream, client_stream, rec)


OPENAI = OpenAIDialect()


def make_inference_handler(path: str, endpoint: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        data, requested, stream = _parse_head(body)
        return await serve_inference(request, path, endpoint, data, body, requested, stream, OPENAI)

    return handler


async def serve_inference(request, path, endpoint, data, body, requested, stream, dialect) -> web.StreamResponse:
    """Place the request on a node (cold-loading if needed), relay it in `dialect`, record metrics."""
    rec = Record(model=request.app[LIFECYCLE].config.resolve_alias(requested), endpoint=endpoint,
                 started=time.perf_counter())
    try:
        return await _serve(request, path, data, body, requested, stream, rec, dialect)
    finally:
        _observe(request.app[METRICS], rec)


async def _serve(request, path, data, body, requested, stream, rec: Record, dialect) -> web.StreamResponse:
    app = request.app
    lifecycle, fleet = app[LIFECYCLE], app[FLEET]
    client_stream: web.StreamResponse | None = None
    exclude: frozenset[str] = frozenset()
    for attempt in (0, 1):
        try:
            node = lifecycle.route_now(rec.model, exclude)
            if node is None:  # cold: a load (or a wait for one) first
                placing = asyncio.ensure_future(lifecycle.node_for(rec.model, exclude))
                if stream:
                    client_stream = await _keepalive_until(request, placing, client_stream, dialect)
                node, _ = await placing
        except ApiError as err:
            rec.status, rec.error_type = err.status, err.type
            if client_stream is None:
                raise
            await client_stream.write(dialect.error_event(err))
            return client_stream
        if attempt == 0:
            app[METRICS].observe_wait(rec.model, time.perf_counter() - rec.started)
        rec.node = node.name
        upstream_id = node.models.get(rec.model, {}).get("id", rec.model)
        payload = _upstream_body(data, body, requested, upstream_id)
        use = fleet.use(node.name, rec.model)
        use.in_flight += 1
        use.last_used = time.time()
        try:
            if not stream:
                return dialect.json_response(*await fetch_json(app[SESSION], node, path, payload, rec))
            upstream = await open_upstream_stream(app[SESSION], node, path, payload)
            if upstream.status != 200:
                return await _stream_refused(upstream, client_stream, rec, dialect)
            client_stream = client_stream or await open_client_stream(request)
            try:
                await dialect.relay(upstream, client_stream, rec)
            except ClientGone:
                rec.status, rec.error_type = 499, "client_closed"
            return client_stream
        except RetryElsewhere as exc:
            _node_failed(app, node, rec.model, exc)
            if exc.node_unusable:
                exclude = exclude | {node.name}
            if attempt == 1:
                err = ApiError(502, "api_error", f"the model's node failed before answering ({exc}); "
                               "retry shortly", code="upstream_unavailable", retry_after=2)
                rec.status, rec.error_type = 502, "upstream_unavailable"
                if client_stream is None:
                    raise err from None
                await client_stream.write(dialect.error_event(err))
                return client_stream
            app[METRICS].retries.labels(rec.model).inc()
        finally:
            use.in_flight -= 1
    raise AssertionError("unreachable")


def _node_failed(app, node: Node, model: str, exc: RetryElsewhere) -> None:
    """Forget the model there until the next poll says otherwise, so the retry goes elsewhere."""
    if exc.unreachable:
        app[FLEET].mark_failed(node, str(exc))
    node.models.pop(model, None)


async def _stream_refused(upstream, client_stream, rec: Record, dialect) -> web.StreamResponse:
    """The node answered the stream request with an error before streaming: pass it on."""
    raw = await upstream.read()
    upstream.release()
    err = upstream_api_error(upstream.status, raw)
    rec.status, rec.error_type = upstream.status, err.type
    if client_stream is None:
        return dialect.json_response(upstream.status, raw)
    await client_stream.write(dialect.error_event(err))
    return client_stream


async def _keepalive_until(request, placing: asyncio.Future, client_stream, dialect):
    """While a cold load runs, keep a streaming client's connection alive (SSE comments or pings)."""
    interval = request.app[KEEPALIVE_S]
    while True:
        done, _ = await asyncio.wait({placing}, timeout=interval)
        if done:
            return client_stream
        client_stream = client_stream or await open_client_stream(request)
        await client_stream.write(dialect.keepalive)


def _observe(metrics: GatewayMetrics, rec: Record) -> None:
    node = rec.node or "none"
    metrics.child(metrics.requests, rec.model, node, rec.endpoint, str(rec.status)).inc()
    if rec.error_type:
        metrics.child(metrics.errors, rec.model, node, rec.error_type).inc()
        metrics.recent.record(rec.model, None, None, ok=False)
        return
    series = metrics.series(rec.model, node)
    series.latency.observe(time.perf_counter() - rec.started)
    series.prompt_tokens.inc(rec.prompt_tokens)
    series.completion_tokens.inc(rec.completion_tokens)
    ttft = tps = None
    if rec.first_token_at is not None and rec.endpoint != "embeddings":
        ttft = rec.first_token_at - rec.started
        series.ttft.observe(ttft)
        if rec.finished_at and rec.completion_tokens > 1 and rec.finished_at > rec.first_token_at:
            tps = (rec.completion_tokens - 1) / (rec.finished_at - rec.first_token_at)
            series.tps.observe(tps)
    metrics.recent.record(rec.model, ttft, tps, ok=True)


KEEPALIVE_S = web.AppKey("keepalive_s", float)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", make_inference_handler("/v1/chat/completions", "chat"))
    app.router.add_post("/v1/completions", make_inference_handler("/v1/completions", "completions"))
    app.router.add_post("/v1/embeddings", make_inference_handler("/v1/embeddings", "embeddings"))

