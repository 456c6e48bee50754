"""`/v1/responses`: create (through the dispatcher, by translation), retrieve, delete, list input items.

A created response goes through the same `dispatch` as every dialect, with a
`ResponsesDialect` that translates the neuron's chat answer (whole or streamed)
into a Response and keeps it in the store when the request asked to (`store`,
true by default), before the client sees its last byte, so a follow-up sent at
once finds it. With API keys configured, a stored response belongs to the key
that made it: another key gets the same 404 as for an id that never existed.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from cortex_gateway.chat_images import check_images
from cortex_gateway.dispatch import dispatch
from cortex_gateway.exchange import InferenceCall, TranslatingDialect
from cortex_gateway.responses.bounds import check_lengths
from cortex_gateway.responses.fields import RESPONSES
from cortex_gateway.responses.store import ResponseStore, StoredResponse
from cortex_gateway.responses.translate_request import Translated, previous_id, to_chat
from cortex_gateway.responses.translate_response import ResponseHead, for_client, to_response
from cortex_gateway.responses.translate_stream import StreamTranslator
from cortex_gateway.state import LIFECYCLE, RESPONSE_STORE, TENANT
from neuron.shared.errors import ApiError, bad_request, error_from_envelope, render_openai
from neuron.shared.fields import require_object
from neuron.shared.http import json_response, read_json

log = logging.getLogger("cortex.gateway.responses.routes")
DROPPED_TOOLS_HEADER = "X-Cortex-Dropped-Tools"  # the hosted tools the model was not offered, comma-separated
_DROPPED = web.RequestKey("dropped_tools", list)


class ResponsesDialect(TranslatingDialect):
    """One request's Response: its head, its stream's state, and where it is kept when done."""

    def __init__(self, translated: Translated, store: ResponseStore, owner: str | None, progress_after: float):
        self.head = ResponseHead(translated.echo, translated.namespaced)
        self.store = store
        self.owner = owner
        # Only what a stored response needs is held while the answer runs; nothing when store is false.
        self.kept = (translated.input_items, translated.conversation) if translated.echo["store"] else None
        self.translator = StreamTranslator(self.head, keep=self._keep)
        self.progress_after = progress_after

    def json_response(self, status: int, raw: bytes) -> web.Response:
        if status != 200:
            return render_openai(for_client(error_from_envelope(status, raw)))
        response = to_response(orjson.loads(raw), self.head)
        self._keep(response)
        return json_response(response)

    def _keep(self, response: dict | None) -> None:
        if self.kept is None or response is None:
            return
        input_items, conversation = self.kept
        entry = StoredResponse(response, input_items, conversation + response["output"], self.owner)
        if not self.store.put(response["id"], entry):
            log.warning("response %s not stored: %d bytes with its output, over [gateway] "
                        "responses_store_max_response_mb; a follow-up to it gets previous_response_not_found",
                        response["id"], entry.size)


async def create(request: web.Request) -> web.StreamResponse:
    data = require_object(await read_json(request))
    RESPONSES.check(data)
    check_lengths(data)
    if (previous := previous_id(data)) is not None:
        await request.app[RESPONSE_STORE].load(previous)  # on PostgreSQL: made through any gateway
    translated = to_chat(data, _history(request, previous_id(data)), request.app[LIFECYCLE].config.hosted_tools)
    request[_DROPPED] = translated.dropped
    store = request.app[RESPONSE_STORE]
    if translated.echo["store"]:
        _check_storable(translated, store)
    body = translated.body
    await check_images(request.app, body)  # refused for a text-only model, bounded, fetched where allowed
    call = InferenceCall("/v1/chat/completions", "responses", body["model"], orjson.dumps(body),
                         bool(body.get("stream")))
    progress_after = request.app[LIFECYCLE].config.progress_interval_s
    answer = await dispatch(request, call, ResponsesDialect(translated, store, _owner(request), progress_after))
    await store.flushed()  # on PostgreSQL: stored before the answer's end goes, so any gateway finds it
    return answer


def _check_storable(translated: Translated, store: ResponseStore) -> None:
    """Refuse, before the model runs, a response the store could not keep: what it would hold is known
    but for its output (the conversation so far, this input, the settings echoed)."""
    size = len(orjson.dumps(translated.conversation)) + len(orjson.dumps(translated.echo))
    if size > store.max_response_bytes:
        raise ApiError(400, "invalid_request_error", f"this response would be stored with {size} bytes of "
                       f"conversation and settings, over the {store.max_response_bytes} bytes one stored response "
                       "may hold ([gateway] responses_store_max_response_mb); send store: false (and the "
                       "conversation yourself), or start a new conversation without previous_response_id",
                       code="response_too_large", param="input")


def _history(request: web.Request, response_id: str | None) -> list[dict]:
    """The conversation `previous_response_id` continues: every earlier input and output item."""
    if response_id is None:
        return []
    entry = _lookup(request, response_id)
    if entry is None:
        raise ApiError(404, "invalid_request_error", f"Previous response with id '{response_id}' not found.",
                       code="previous_response_not_found", param="previous_response_id")
    return entry.conversation


def _owner(request: web.Request) -> str | None:
    """The hash of the request's API key (the auth middleware has resolved it, config file's and state
    database's alike), None on a gateway without keys: one key's stored responses are not another's."""
    tenant = request.get(TENANT)
    return None if tenant is None else tenant.key_hash


def _lookup(request: web.Request, response_id: str) -> StoredResponse | None:
    entry = request.app[RESPONSE_STORE].get(response_id)
    return entry if entry is not None and entry.owner == _owner(request) else None


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    await request.app[RESPONSE_STORE].load(response_id)  # on PostgreSQL: made or deleted through any gateway
    entry = _lookup(request, response_id)
    if entry is None:
        raise _not_found(response_id)
    return entry


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, "invalid_request_error", f"Response with id '{response_id}' not found.",
                    code="response_not_found")


async def retrieve(request: web.Request) -> web.Response:
    if request.query.get("stream", "false").lower() not in ("false", "0"):
        raise bad_request("stream: a stored response cannot be replayed as a stream here; GET it without "
                          "stream", param="stream")
    return json_response((await _stored(request)).response)


async def delete(request: web.Request) -> web.Response:
    response_id = (await _stored(request)).response["id"]
    await request.app[RESPONSE_STORE].remove(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """One page of a stored response's own input items (newest first unless order=asc), as OpenAI pages them."""
    items = (await _stored(request)).input_items
    order, after = request.query.get("order", "desc"), request.query.get("after")
    if order not in ("asc", "desc"):
        raise bad_request('order: expected "asc" or "desc"', param="order")
    limit = request.query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise bad_request("limit: expected an integer from 1 to 100", param="limit")
    items = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise bad_request(f"after: no input item of this response has the id {after!r}", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:int(limit)]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)})


async def _say_dropped_tools(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a stream's headers go before its first event, so the hosted tools a request lost
    are named here, for the whole answer and for a stream alike (the Response says so too)."""
    if request.get(_DROPPED):
        response.headers[DROPPED_TOOLS_HEADER] = ", ".join(request[_DROPPED])


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_say_dropped_tools)
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
