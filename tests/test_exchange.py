"""`cortex_gateway.exchange.Exchange`: one request's stream, opened on first need, and its one way to end.

Each test serves a real request in process through a step of an exchange in the
OpenAI dialect (as dispatch's steps take it), over a real upstream where the
step needs a neuron's answer, and reads what the client got and what the
request's record says.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from cortex_gateway.errors import renderer_for
from cortex_gateway.exchange import Exchange, InferenceCall
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.openai_routes import OPENAI
from cortex_gateway.state import KEEPALIVE_S
from neuron.shared.errors import ApiError, error_middleware
from neuron.shared.sse import DONE, KEEPALIVE, PROMPT_TOKENS_HEADER

BUSY = ApiError(503, "overloaded_error", "no node can take it", code="no_capacity")
REFUSAL = {"error": {"message": "prompt is too long", "type": "invalid_request_error",
                     "code": "context_length_exceeded", "param": "messages"}}
STREAM = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n' + DONE


@pytest.fixture
def serve(aiohttp_client):
    """A client of an app whose one route runs `step(exchange)`; the exchanges it made, to read after."""

    async def start(step, endpoint: str = "chat"):
        made: list[Exchange] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            rec = RequestRecord(model="m", endpoint=endpoint, started=time.perf_counter())
            made.append(Exchange(request, InferenceCall("/v1/chat/completions", endpoint, "m", b"{}", True),
                                 OPENAI, rec))
            return await step(made[-1])

        app = web.Application(middlewares=[error_middleware(renderer_for, "gateway")])
        app[KEEPALIVE_S] = 0.01
        app.router.add_post("/", handler)
        return await aiohttp_client(app), made

    return start


@pytest.fixture
async def neuron(aiohttp_server):
    """A neuron's two answers to a stream request: a refusal before streaming, and a stream."""

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response(REFUSAL, status=400)

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", PROMPT_TOKENS_HEADER: "12"})
        await resp.prepare(request)
        await resp.write(STREAM)
        return resp

    app = web.Application()
    app.router.add_post("/refuse", refuse)
    app.router.add_post("/stream", stream)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        yield lambda path: session.post(server.make_url(path))


async def test_a_failure_before_the_stream_opens_is_a_status(serve):
    async def step(ex: Exchange):
        return await ex.fail(BUSY)

    client, made = await serve(step)
    resp = await client.post("/")
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "no_capacity"
    assert (made[0].record.status, made[0].record.error_type) == (503, "overloaded_error")


async def test_a_failure_once_the_stream_is_open_ends_it_with_the_dialects_error_event(serve):
    async def step(ex: Exchange):
        await ex.stream()
        return await ex.fail(BUSY, status_type="upstream_unavailable")

    client, made = await serve(step)
    resp = await client.post("/")
    assert resp.status == 200 and await resp.read() == OPENAI.error_event(BUSY)
    assert (made[0].record.status, made[0].record.error_type) == (503, "upstream_unavailable")


async def test_a_wait_that_ends_before_an_interval_opens_no_stream(serve):
    async def step(ex: Exchange):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        await ex.keepalive_until(done)
        assert not ex.opened
        return ex.answer(200, orjson.dumps({"usage": {"prompt_tokens": 4, "completion_tokens": 2}}))

    client, made = await serve(step)
    resp = await client.post("/")
    assert resp.status == 200 and resp.content_type == "application/json"
    rec = made[0].record
    assert (rec.prompt_tokens, rec.completion_tokens) == (4, 2) and rec.first_token_at == rec.finished_at


async def test_a_long_wait_opens_the_stream_for_its_keepalives(serve):
    loaded = asyncio.Event()

    async def step(ex: Exchange):
        waiting = asyncio.ensure_future(loaded.wait())
        await ex.keepalive_until(waiting)
        stream = await ex.stream()
        await stream.write(STREAM)
        return stream

    client, _ = await serve(step)
    resp = await client.post("/")
    async with asyncio.timeout(5):
        assert await resp.content.readline() == KEEPALIVE[:-1]  # sent while the wait went on
        loaded.set()
        assert (await resp.read()).replace(KEEPALIVE, b"") == b"\n" + STREAM


@pytest.mark.parametrize("endpoint, timed", [("chat", True), ("count_tokens", False)])
async def test_a_whole_answer_s_error_is_recorded_and_passed_on(serve, endpoint, timed):
    async def step(ex: Exchange):
        return ex.answer(400, orjson.dumps(REFUSAL))

    client, made = await serve(step, endpoint)
    resp = await client.post("/")
    assert resp.status == 400 and await resp.json() == REFUSAL
    rec = made[0].record
    assert (rec.status, rec.error_type) == (400, "invalid_request_error")
    assert (rec.first_token_at is not None) == timed  # a token count makes no first token to time


@pytest.mark.parametrize("opened", [False, True])
async def test_a_refusal_before_streaming_is_a_status_until_the_stream_is_open(serve, neuron, opened):
    async def step(ex: Exchange):
        if opened:
            await ex.stream()  # as a cold load's keep-alives open it
        return await ex.refused(await neuron("/refuse"))

    client, made = await serve(step)
    resp = await client.post("/")
    body = await resp.read()
    if opened:
        assert resp.status == 200 and body.startswith(b'data: {"error":') and body.endswith(DONE)
    else:
        assert resp.status == 400 and orjson.loads(body) == REFUSAL
    assert (made[0].record.status, made[0].record.error_type) == (400, "invalid_request_error")


async def test_a_relayed_stream_takes_the_prompt_size_from_the_neurons_headers(serve, neuron):
    async def step(ex: Exchange):
        return await ex.relay(await neuron("/stream"))

    client, made = await serve(step)
    resp = await client.post("/")
    assert await resp.read() == STREAM  # passed through as it came
    rec = made[0].record
    assert (rec.prompt_tokens, rec.status) == (12, 200) and rec.first_token_at is not None
