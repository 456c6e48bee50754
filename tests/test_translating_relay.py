"""`proxy.relay_translated` and the `Translator` protocol, over a real upstream and a real client, in process.

The relay is the one loop both translating dialects (Anthropic, Responses) use:
these tests drive it with a translator that names each call it gets, so what the
relay asks of a translator, and what it records, is checked apart from any
dialect's events; then the two real translators through the same relay.
"""

from __future__ import annotations

import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from cortex_gateway.anthropic.translate_stream import StreamTranslator as AnthropicTranslator
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.proxy import relay_translated
from cortex_gateway.responses.translate_response import ResponseHead
from cortex_gateway.responses.translate_stream import StreamTranslator as ResponsesTranslator
from cortex_gateway.translator import ProgressClock
from neuron.shared.errors import ApiError

PROGRESS_S = 60.0
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
         "prompt_tokens_details": {"cached_tokens": 4}}


def event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(**d) -> dict:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


class Naming(ProgressClock):
    """A translator whose every call is one line naming it, so a test reads what the relay asked."""

    plain = b"plain\n"

    def __init__(self):
        super().__init__()
        self.started = False
        self.usage: dict | None = None

    def start(self, prompt_tokens: int | None = None) -> bytes:
        self.started = True
        return f"start {prompt_tokens}\n".encode()

    def feed(self, chunk: dict) -> bytes:
        self.usage = chunk.get("usage", self.usage)
        return b"feed " + orjson.dumps(chunk) + b"\n"

    def finish(self) -> bytes:
        return b"finish\n"

    def fail(self, err: ApiError) -> bytes:
        return f"fail {err.status} {err.code}\n".encode()

    def progress(self, now: float) -> bytes:
        return b"progress\n"


@pytest.fixture
def relayed(aiohttp_server, aiohttp_client):
    """Relay `pieces` (each one write of an upstream, which then ends, or drops the connection) through
    `relay_translated` to a real client; the bytes the client got and the request's record."""

    async def run(pieces: list[bytes], translator, drop: bool = False, prompt: str = "") -> tuple[bytes, RequestRecord]:
        async def upstream(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for piece in pieces:
                await resp.write(piece)
            if drop:
                request.transport.abort()
            return resp

        up = web.Application()
        up.router.add_get("/", upstream)
        url = (await aiohttp_server(up)).make_url("/")
        rec = RequestRecord(model="m", endpoint="messages", started=time.perf_counter(), node="n1")
        rec.streaming(prompt)

        async def relay(request: web.Request) -> web.StreamResponse:
            async with aiohttp.ClientSession() as session:
                client = web.StreamResponse()
                await client.prepare(request)
                await relay_translated(await session.get(url), client, rec, translator, PROGRESS_S)
                return client

        gw = web.Application()
        gw.router.add_get("/", relay)
        resp = await (await aiohttp_client(gw)).get("/")
        return await resp.read(), rec

    return run


async def test_a_whole_stream_is_fed_chunk_by_chunk_and_finished(relayed):
    content = event(delta(content="Hi"))
    pieces = [event(delta(role="assistant", content="")), KEEPALIVE, content[:9], content[9:],
              event(FINISH) + b": cortex-usage " + orjson.dumps(USAGE) + b"\n\n",
              event({"choices": [], "usage": USAGE}), DONE]
    got, rec = await relayed(pieces, Naming(), prompt="9")
    lines = got.decode().splitlines()
    assert lines[0] == "start 9" and lines[2] == "plain" and lines[-1] == "finish"
    assert [orjson.loads(line[5:]) for line in lines if line.startswith("feed")] == [
        delta(role="assistant", content=""), delta(content="Hi"), FINISH, {"choices": [], "usage": USAGE}]
    assert (rec.prompt_tokens, rec.completion_tokens, rec.status) == (9, 2, 200)
    assert rec.first_token_at is not None and rec.finished_at >= rec.first_token_at


async def test_a_translator_a_wait_started_is_not_started_again(relayed):
    translator = Naming()
    translator.start(3)
    got, _ = await relayed([event(delta(content="Hi")), event(FINISH), DONE], translator)
    assert b"start" not in got and got.endswith(b"finish\n")


async def test_the_neurons_error_event_ends_the_stream(relayed):
    error = {"error": {"message": "the engine died", "type": "server_error", "code": "engine_failed"}}
    got, rec = await relayed([event(delta(content="Hi")), event(error), event(delta(content="late"))], Naming())
    assert got.decode().splitlines()[-1] == "fail 502 engine_failed" and b"late" not in got
    assert (rec.status, rec.error_type) == (502, "server_error")


@pytest.mark.parametrize("drop", [False, True], ids=["ends", "drops"])
async def test_a_stream_cut_short_fails_as_the_node_failing(relayed, drop):
    got, rec = await relayed([event(delta(content="Hi")), event(delta(content=" there"))], Naming(), drop=drop)
    assert got.decode().splitlines()[-1] == "fail 502 upstream_failed"
    assert (rec.status, rec.error_type) == (502, "upstream_failed")
    assert rec.completion_tokens == rec.sent_outputs  # what it was sent counts, as a lower bound


async def test_an_answer_without_output_has_no_first_token(relayed):
    _, rec = await relayed([event(delta(role="assistant", content="")), event(FINISH), DONE], Naming())
    assert rec.first_token_at is None and rec.finished_at is not None


@pytest.mark.parametrize("translator, last", [
    (lambda: AnthropicTranslator("m", []), b"event: message_stop"),
    (lambda: ResponsesTranslator(ResponseHead({"model": "m", "store": False})), b"event: response.completed"),
], ids=["anthropic", "responses"])
async def test_both_dialects_translators_give_the_relay_the_usage_in_the_neurons_terms(relayed, translator, last):
    """Anthropic counts the cached prompt tokens apart; the record must count the whole prompt either way."""
    pieces = [event(delta(content="Hi")), event(FINISH), event({"choices": [], "usage": USAGE}), DONE]
    got, rec = await relayed(pieces, translator(), prompt="9")
    assert got.rstrip().split(b"\n\n")[-1].startswith(last)
    assert (rec.prompt_tokens, rec.completion_tokens) == (9, 2)


# -- the progress clock -------------------------------------------------------------------
def test_a_keepalive_is_plain_until_the_interval_passes_then_progress_and_the_clock_restarts():
    clock = Naming()
    clock.sent(now=0.0)
    assert clock.keepalive(PROGRESS_S, now=PROGRESS_S - 1) == b"plain\n"
    assert clock.keepalive(PROGRESS_S, now=PROGRESS_S) == b"progress\n"
    assert clock.keepalive(PROGRESS_S, now=2 * PROGRESS_S - 1) == b"plain\n"  # counted from the progress event
    clock.sent(now=2 * PROGRESS_S)  # an event of the answer restarts it too
    assert clock.keepalive(PROGRESS_S, now=3 * PROGRESS_S - 1) == b"plain\n"
