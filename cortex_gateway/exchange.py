"""One inference request as it goes through the gateway: what was asked, of whom, and what the client got.

Every public dialect (OpenAI, Anthropic, Responses, and those to come) turns
its request into an `InferenceCall` in the neurons' OpenAI dialect and names a
`Dialect` that says how to answer its own clients. `dispatch` makes of the two
and the request an `Exchange`, which every step of the request then takes: it
holds the record the metrics and the access log read, and the client's stream,
opened on first need (a cold load's first keep-alive, or the neuron's headers).
So no step threads the stream or the record by hand, and every failure ends the
request one way: an error response while nothing was sent, the dialect's error
event once the stream is open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.metrics import RequestRecord
from cortex_gateway.proxy import ClientGone, open_client_stream, relay_translated, usage_of
from cortex_gateway.state import KEEPALIVE_S
from cortex_gateway.translator import Translator
from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.multipart import parse_form, replaced
from neuron.shared.sse import PROMPT_TOKENS_HEADER
from neuron.shared.transcription_fields import USAGE_HEADER

JSON = "application/json"


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


class TranslatingDialect:
    """A dialect whose streams are translated (Anthropic's, Responses'): its keep-alives, error events and
    relay are its translator's. Made with the request, as its translator is: a cold load's keep-alives come
    before the neuron's answer. Subclasses set both fields and answer whole answers themselves."""

    translator: Translator
    progress_after: float  # seconds without an event before a keep-alive is progress ([gateway] progress_interval_s)

    @property
    def keepalive(self) -> bytes:
        """Read at each keep-alive of a wait: the plain one, or progress once the wait is long."""
        return self.translator.keepalive(self.progress_after)

    def error_event(self, err: ApiError) -> bytes:
        return self.translator.fail(err)

    async def relay(self, upstream: aiohttp.ClientResponse, client_stream: web.StreamResponse,
                    rec: RequestRecord) -> None:
        await relay_translated(upstream, client_stream, rec, self.translator, self.progress_after)


@dataclass
class InferenceCall:
    """A request in the neurons' dialect: where it goes and what it carries."""

    path: str  # the neuron route, e.g. /v1/chat/completions
    endpoint: str  # the metrics label: chat, completions, embeddings, messages, responses, count_tokens
    model: str  # as the client named it (maybe an alias)
    body: bytes  # what the neuron gets: the client's own bytes when they can pass through untouched
    stream: bool
    content_type: str = JSON  # the body's, sent on with it (a transcription's multipart/form-data and boundary)

    def body_for(self, upstream_id: str) -> bytes:
        """The body, re-encoded only when the node knows the model by another name (an alias, a path); a
        multipart body keeps every byte but its `model` field's.

        The parsed request is not kept while the answer streams: a large body would otherwise hold
        its whole object tree in memory for the length of the request."""
        if self.model == upstream_id:
            return self.body
        if self.content_type != JSON:
            return replaced(parse_form(self.body, self.content_type), "model", upstream_id)
        return orjson.dumps({**orjson.loads(self.body), "model": upstream_id})


class Exchange:
    """One request: the client's request, its call to a neuron, its record, its dialect, its stream."""

    def __init__(self, request: web.Request, call: InferenceCall, dialect: Dialect, record: RequestRecord):
        self.request, self.call, self.dialect, self.record = request, call, dialect, record
        self._stream: web.StreamResponse | None = None

    @property
    def opened(self) -> bool:
        """Whether the client's stream is open: from then on the request's end is an event, not a status."""
        return self._stream is not None

    async def stream(self) -> web.StreamResponse:
        """The client's stream, opened the first time it is needed."""
        if self._stream is None:
            self._stream = await open_client_stream(self.request)
        return self._stream

    async def keepalive_until(self, waiting: asyncio.Future) -> None:
        """Until `waiting` is done (a cold load, the neuron's headers), keep the client's connection alive
        with the dialect's keep-alive every [gateway] keepalive_s, opening the stream for the first one."""
        interval = self.request.app[KEEPALIVE_S]
        while not (await asyncio.wait({waiting}, timeout=interval))[0]:
            await (await self.stream()).write(self.dialect.keepalive)

    async def fail(self, err: ApiError, status_type: str | None = None) -> web.StreamResponse:
        """Raise the error for the middleware to render, or end the stream already open with it."""
        self.record.failed(err.status, status_type or err.type)
        if self._stream is None:
            raise err
        await self._stream.write(self.dialect.error_event(err))
        return self._stream

    def answer(self, status: int, raw: bytes, headers=None) -> web.Response:
        """A whole answer (or the neuron's error), recorded, in the client's dialect. An answer that is not JSON
        (a transcript as text) passes as it came, its usage read from the neuron's header."""
        if status != 200:
            self.record.answered(status, error_type=error_from_envelope(status, raw).type)
            return self.dialect.json_response(status, raw)
        kind = (headers or {}).get("Content-Type", JSON)
        if kind.startswith(JSON):
            self.record.answered(status, usage=usage_of(raw))
            return self.dialect.json_response(status, raw)
        self.record.answered(status, usage=_header_usage(headers.get(USAGE_HEADER)))
        return web.Response(body=raw, status=status, headers={"Content-Type": kind})

    async def refused(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """The node answered the stream request with an error before streaming: pass it on, as a status
        in the client's dialect while nothing was sent (a refusal Claude Code acts on), else as an event."""
        raw = await upstream.read()
        upstream.release()
        err = error_from_envelope(upstream.status, raw)
        if self._stream is not None:
            return await self.fail(err)
        self.record.failed(upstream.status, err.type)
        return self.dialect.json_response(upstream.status, raw)

    async def relay(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """The neuron's stream, to the client in its dialect."""
        self.record.streaming(upstream.headers.get(PROMPT_TOKENS_HEADER, ""))
        stream = await self.stream()
        try:
            await self.dialect.relay(upstream, stream, self.record)
        except ClientGone:
            self.record.client_left()
        return stream


def _header_usage(value: str | None) -> dict | None:
    try:
        usage = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None
