"""One inference request through the fleet: place it, relay it, retry it once, record it.

Every public dialect hands `dispatch` an `InferenceCall` in the neurons' OpenAI
dialect plus a `Dialect` that says how to answer its own clients, and each step
below takes the one `Exchange` made of them (`cortex_gateway.exchange`).
Placement, the retry on another node before the first byte, keep-alives during
a cold load and metrics are written once, here.

The seams for what comes: a check that may refuse a request before it is placed
(a tenant's budget, the models a key may use) goes at the top of `_attempts`,
ending the request with `ex.fail(err)` as a failed placement does, so it is
recorded and rendered like any refusal; a scheduler that picks among the nodes
(filters, scorers, a picker over a fleet snapshot) replaces the choice in
`place`, which is the one place a node is chosen.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from cortex_gateway import allow_list, metering
from cortex_gateway.exchange import Dialect, Exchange, InferenceCall
from cortex_gateway.fleet import Node
from cortex_gateway.metrics import OBSERVED, RECORD, RequestRecord
from cortex_gateway.prefix_map import RequestKeys
from cortex_gateway.proxy import RetryElsewhere, fetch_answer, open_upstream_stream
from cortex_gateway.state import FLEET, LIFECYCLE, METRICS, PRIORITY, SESSION, TENANT
from neuron.shared.errors import ApiError
from neuron.shared.kinds import wrong_kind


async def dispatch(request: web.Request, call: InferenceCall, dialect: Dialect) -> web.StreamResponse:
    """Place the request on a node (cold-loading if needed), relay it in `dialect`, record metrics."""
    app = request.app
    lifecycle = app[LIFECYCLE]
    rec = RequestRecord(model=lifecycle.config.resolve_alias(call.model), endpoint=call.endpoint,
                        started=time.perf_counter())
    request[OBSERVED] = True
    request[RECORD] = rec
    try:
        return await _attempts(Exchange(request, call, dialect, rec))
    except asyncio.CancelledError:  # aiohttp cancels the handler of a client that leaves
        rec.client_left()
        raise
    finally:
        rec.settle_label(lifecycle.known)  # a placed request's model is known; only others ask the catalog
        app[METRICS].observe(rec)
        await metering.settle(request, rec)  # billed, and committed, before a whole answer's bytes are sent


async def _attempts(ex: Exchange) -> web.StreamResponse:
    """At most two tries: a node that fails before the first byte is dropped and the request goes elsewhere."""
    app, rec = ex.request.app, ex.record
    if refused := allow_list.refusal(ex.request.get(TENANT), ex.call.model, app[LIFECYCLE].config.resolve_alias):
        return await ex.fail(refused)  # a model this key may not use: as if it did not exist
    if refused := await metering.admit(ex):  # the key's worst case held (budget, TPM), or a 429
        return await ex.fail(refused)
    exclude: frozenset[str] = frozenset()
    keys = RequestKeys(rec.model, ex.call.path, ex.call.body, ex.request.headers)  # read only if a choice needs them
    for attempt in (0, 1):
        try:
            node = await place(ex, exclude, keys)
        except ApiError as err:
            return await ex.fail(err)
        if refused := await metering.admit(ex, node):  # a no-op if held above; else the context is known now
            return await ex.fail(refused)
        rec.placed(node.name)
        if attempt == 0:
            app[METRICS].observe_wait(rec.label, time.perf_counter() - rec.started)
        try:
            response = await _forward(ex, node)
            if rec.status == 200:
                app[LIFECYCLE].served(keys, node.name)
            return response
        except ApiError as err:  # the node's answer will not come (a non-streaming answer past its timeout)
            return await ex.fail(err)
        except RetryElsewhere as exc:
            _forget_failed(app, node, rec.model, exc)
            if exc.node_unusable or exc.refused and _loaded_elsewhere(app, rec.model, exclude | {node.name}):
                exclude = exclude | {node.name}
            if attempt == 1:
                err = ApiError(502, "api_error", f"the model's node failed before answering ({exc}); "
                               "retry shortly", code="upstream_unavailable", retry_after=2)
                return await ex.fail(err, status_type="upstream_unavailable")
            app[METRICS].retries.labels(rec.label).inc()
    raise AssertionError("unreachable")


async def place(ex: Exchange, exclude: frozenset[str], keys: RequestKeys | None = None) -> Node:
    """The node the request goes to, `exclude` aside: one with the model loaded (the one likely to hold
    its prefix, by `keys`, when several have it; held in the gateway first while that one is full and a
    replica is coming), else a cold load first (keep-alives for a stream while either waits)."""
    lifecycle, model = ex.request.app[LIFECYCLE], ex.record.model
    node = lifecycle.loaded_node(model, exclude, keys)
    if node is not None:
        hold = lifecycle.on_demand(model, node)  # a deep queue there adds replicas (cortex_gateway.scaler)
        if hold is None:
            return node
        node = await hold.placed(lambda: lifecycle.loaded_node(model, exclude, keys),
                                 ex.keepalive_until if ex.call.stream else None)
        if node is not None:
            return node
    if refused := wrong_kind(model, lifecycle.kind_of(model), ex.call.path):  # refused before loading it
        raise refused
    placing = asyncio.ensure_future(lifecycle.node_for(model, exclude, ex.request.get(PRIORITY, "normal")))
    if ex.call.stream:
        await ex.keepalive_until(placing)
    return await placing


async def _forward(ex: Exchange, node: Node) -> web.StreamResponse:
    app, call = ex.request.app, ex.call
    payload = call.body_for(node.upstream_id(ex.record.model))
    usage = app[FLEET].usage_of(node.name, ex.record.model)
    above_low = int(ex.request.get(PRIORITY) != "low")  # a waiting cold load claims low-only victims first
    usage.in_flight += 1
    usage.above_low += above_low
    usage.last_used = time.time()
    try:
        if not call.stream:
            return ex.answer(*await fetch_answer(app[SESSION], node, call.path, payload, call.content_type))
        upstream = await _open_upstream(ex, node, payload)
        if upstream.status != 200:
            return await ex.refused(upstream)
        return await ex.relay(metering.billed_at_usage(ex.request, upstream))  # billed before [DONE] is relayed
    finally:
        usage.in_flight -= 1
        usage.above_low -= above_low
        usage.last_used = time.time()  # idle from the end of its last request (keep-alive, LRU), not its start
        app[LIFECYCLE].request_ended(node.name, ex.record.model)  # idle now: a waiting cold load may evict it


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


async def _open_upstream(ex: Exchange, node: Node, payload: bytes):
    """The neuron's stream, once its headers come. They are its verdict on the request (the prompt fits
    the context, the schema compiles...), so nothing is committed to the client before them: a refusal is
    then a real status in the client's dialect (Claude Code compacts on the 400 `prompt is too long`, not
    on an error event). The neuron checks a request before it queues and keeps it alive itself once it
    makes it wait, so the client hears from us meanwhile only on a stream already open (a cold load's)."""
    opening = asyncio.ensure_future(open_upstream_stream(ex.request.app[SESSION], node, ex.call.path, payload))
    try:
        if ex.opened:
            await ex.keepalive_until(opening)
        return await opening
    finally:
        opening.cancel()  # a no-op once done; stops the upstream request if the client left meanwhile
