"""One inference request through the fleet: place it, relay it, retry it once, record it.

Every public dialect (OpenAI, Anthropic, and those to come) hands `dispatch` an
`InferenceCall` in the neurons' OpenAI dialect plus a `Dialect` that says how
to answer its own clients: keep-alive bytes, error events, whole answers and
the relay of a stream. Placement, the retry on another node before the first
byte, keep-alives during a cold load and metrics are written once, here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.fleet import Node
from cortex_gateway.metrics import OBSERVED, RECORD, RequestRecord
from cortex_gateway.proxy import (
    ClientGone,
    OutputTap,
    RetryElsewhere,
    fetch_json,
    open_client_stream,
    open_upstream_stream,
)
from cortex_gateway.state import FLEET, KEEPALIVE_S, LIFECYCLE, METRICS, SESSION
from neuron.shared.errors import ApiError, error_from_envelope


class Dialect(Protocol):
    """How a public API answers its clients; the neurons always speak OpenAI."""

    keepalive: bytes  # written to a waiting stream while a cold load runs

    def error_event(self, err: ApiError) -> bytes:
        """The bytes that end a stream whose headers are already sent."""

    def json_response(self, status: int, raw: bytes) -> web.Response:
        """A whole (non-streaming) neuron answer, or its error, in this dialect."""

    async def relay(self, upstream: aiohttp.ClientResponse, client_stream: web.StreamResponse,
                    rec: RequestRecord) -> None:
        """Copy (translating if need be) the neuron's SSE stream to the client, noting TTFT and usage."""


@dataclass
class InferenceCall:
    """A request in the neurons' dialect: where it goes and what it carries."""

    path: str  # the neuron route, e.g. /v1/chat/completions
    endpoint: str  # the metrics label: chat, completions, embeddings, messages
    model: str  # as the client named it (maybe an alias)
    body: bytes  # what the neuron gets: the client's own bytes when they can pass through untouched
    stream: bool

    def body_for(self, upstream_id: str) -> bytes:
        """The body, re-encoded only when the node knows the model by another name (an alias, a path).

        The parsed request is not kept while the answer streams: a large body would otherwise hold
        its whole object tree in memory for the length of the request."""
        if self.model == upstream_id:
            return self.body
        return orjson.dumps({**orjson.loads(self.body), "model": upstream_id})


async def dispatch(request: web.Request, call: InferenceCall, dialect: Dialect) -> web.StreamResponse:
    """Place the request on a node (cold-loading if needed), relay it in `dialect`, record metrics."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    rec = RequestRecord(model=lifecycle.config.resolve_alias(call.model), endpoint=call.endpoint,
                        started=time.perf_counter())
    request[OBSERVED] = True
    request[RECORD] = rec
    try:
        return await _attempts(request, call, rec, dialect)
    except asyncio.CancelledError:  # aiohttp cancels the handler of a client that leaves
        rec.client_left()
        raise
    finally:
        # A placed request's model is known; only one that never reached a node asks the catalog.
        if not rec.node and lifecycle.known(rec.model):
            rec.label = rec.model
        app[METRICS].observe(rec)


async def _attempts(request: web.Request, call: InferenceCall, rec: RequestRecord,
                    dialect: Dialect) -> web.StreamResponse:
    """At most two tries: a node that fails before the first byte is dropped and the request goes elsewhere."""
    app = request.app
    client_stream: web.StreamResponse | None = None
    exclude: frozenset[str] = frozenset()
    for attempt in (0, 1):
        try:
            node, client_stream = await _place(request, call, rec.model, exclude, client_stream, dialect)
        except ApiError as err:
            return await _fail(rec, err, client_stream, dialect)
        rec.node, rec.label = node.name, rec.model
        if attempt == 0:
            app[METRICS].observe_wait(rec.label, time.perf_counter() - rec.started)
        try:
            return await _forward(request, call, node, rec, client_stream, dialect)
        except ApiError as err:  # the node's answer will not come (a non-streaming answer past its timeout)
            return await _fail(rec, err, client_stream, dialect)
        except RetryElsewhere as exc:
            client_stream = exc.client_stream or client_stream
            _forget_failed(app, node, rec.model, exc)
            if exc.node_unusable or exc.refused and _loaded_elsewhere(app, rec.model, exclude | {node.name}):
                exclude = exclude | {node.name}
            if attempt == 1:
                err = ApiError(502, "api_error", f"the model's node failed before answering ({exc}); "
                               "retry shortly", code="upstream_unavailable", retry_after=2)
                return await _fail(rec, err, client_stream, dialect, status_type="upstream_unavailable")
            app[METRICS].retries.labels(rec.label).inc()
    raise AssertionError("unreachable")


async def _place(request, call: InferenceCall, model: str, exclude: frozenset[str], client_stream,
                 dialect: Dialect) -> tuple[Node, web.StreamResponse | None]:
    """A node with the model loaded; a cold load first if there is none, with keep-alives for streams."""
    lifecycle = request.app[LIFECYCLE]
    node = lifecycle.loaded_node(model, exclude)
    if node is None:
        if call.path != "/v1/embeddings" and lifecycle.embedding_only(model):  # refused before loading it
            raise ApiError(400, "invalid_request_error", f"model {model!r} is an embedding model: it serves "
                           "/v1/embeddings only; pick a chat model from /v1/models", code="embedding_model",
                           param="model")
        placing = asyncio.ensure_future(lifecycle.node_for(model, exclude))
        if call.stream:
            client_stream = await _keepalive_until(request, placing, client_stream, dialect)
        node = await placing
    return node, client_stream


async def _forward(request, call: InferenceCall, node: Node, rec: RequestRecord, client_stream,
                   dialect: Dialect) -> web.StreamResponse:
    app = request.app
    payload = call.body_for(node.upstream_id(rec.model))
    usage = app[FLEET].usage_of(node.name, rec.model)
    usage.in_flight += 1
    usage.last_used = time.time()
    try:
        if not call.stream:
            return dialect.json_response(*await fetch_json(app[SESSION], node, call.path, payload, rec))
        upstream, client_stream = await _open_upstream(request, node, call.path, payload, client_stream, dialect)
        if upstream.status != 200:
            return await _stream_refused(upstream, client_stream, rec, dialect)
        client_stream = client_stream or await open_client_stream(request)
        try:
            await dialect.relay(OutputTap(upstream, rec), client_stream, rec)
        except ClientGone:
            rec.client_left()
        return client_stream
    finally:
        usage.in_flight -= 1


async def _fail(rec: RequestRecord, err: ApiError, client_stream, dialect: Dialect,
                status_type: str | None = None) -> web.StreamResponse:
    """Raise the error for the middleware to render, or end a stream already open with it."""
    rec.failed(err.status, status_type or err.type)
    if client_stream is None:
        raise err
    await client_stream.write(dialect.error_event(err))
    return client_stream


def _forget_failed(app, node: Node, model: str, exc: RetryElsewhere) -> None:
    """Forget the model there until the next poll says otherwise, so the retry goes elsewhere; a live node
    that refused the connection still has it, and has not failed."""
    if exc.refused:
        return
    if exc.unreachable:
        app[FLEET].mark_failed(node, str(exc))
    node.models.pop(model, None)


def _loaded_elsewhere(app, model: str, exclude: frozenset[str]) -> bool:
    """Whether another node has the model loaded: a node that refused a connection is avoided only then
    (alone, it is tried again rather than a cold load started elsewhere or a 503 given)."""
    return app[LIFECYCLE].loaded_node(model, exclude) is not None


async def _stream_refused(upstream, client_stream, rec: RequestRecord, dialect: Dialect) -> web.StreamResponse:
    """The node answered the stream request with an error before streaming: pass it on."""
    raw = await upstream.read()
    upstream.release()
    err = error_from_envelope(upstream.status, raw)
    rec.failed(upstream.status, err.type)
    if client_stream is None:
        return dialect.json_response(upstream.status, raw)
    await client_stream.write(dialect.error_event(err))
    return client_stream


async def _open_upstream(request, node: Node, path: str, payload: bytes, client_stream, dialect: Dialect):
    """The neuron's stream, once its headers come. They are its verdict on the request (the prompt fits
    the context, the schema compiles...), so nothing is committed to the client before them: a refusal is
    then a real status in the client's dialect (Claude Code compacts on the 400 `prompt is too long`, not
    on an error event). The neuron checks a request before it queues and keeps it alive itself once it
    makes it wait, so the client hears from us meanwhile only on a stream already open (a cold load's)."""
    opening = asyncio.ensure_future(open_upstream_stream(request.app[SESSION], node, path, payload))
    try:
        if client_stream is not None:
            client_stream = await _keepalive_until(request, opening, client_stream, dialect)
        return await opening, client_stream
    except RetryElsewhere as exc:
        exc.client_stream = client_stream
        raise
    finally:
        opening.cancel()  # a no-op once done; stops the upstream request if the client left meanwhile


async def _keepalive_until(request, placing: asyncio.Future, client_stream, dialect: Dialect):
    """While a cold load runs, keep a streaming client's connection alive (SSE comments or pings)."""
    interval = request.app[KEEPALIVE_S]
    while True:
        done, _ = await asyncio.wait({placing}, timeout=interval)
        if done:
            return client_stream
        client_stream = client_stream or await open_client_stream(request)
        await client_stream.write(dialect.keepalive)
