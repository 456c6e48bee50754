"""What a client sees while it waits: a cold load, the neuron's prefill, the neuron's held headers; and one load
however many requests wait for it. The gateway's app in process over fake neurons (tests/gateway_inprocess.py).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.gateway_inprocess import (
    ANTHROPIC,
    DEADLINE,
    OPENAI,
    ROUTES,
    body,
    next_event,
    open_stream,
    read_until,
    rest,
    wait,
)


# -- cold loads -------------------------------------------------------------------------
@ROUTES
async def test_stream_gets_keepalives_while_its_model_loads(fakes, gateway_over, route):
    """A cold load can take minutes; proxies drop a silent connection, so the gateway must speak first."""
    fake = await fakes.start("n1", available={"m": 100})
    load = fake.hold_loads()
    resp = await open_stream(await gateway_over(fake), route)
    first = await next_event(resp)
    assert first.startswith(route.keepalive), first
    await wait(load.arrived)
    assert "m" not in fake.loaded and not fake.chats  # the load is still held
    load.release()
    tail = await rest(resp)
    assert b"hello" in tail and route.done in tail, tail
    assert fake.loads == ["m"]


@ROUTES
async def test_the_neurons_prefill_keepalives_reach_the_client(fakes, gateway_over, route):
    """A long prompt prefills for a while; the neuron's `: keep-alive` arrives as the route's own keep-alive
    (an Anthropic `ping`), or clients with stall detection give up (Claude Code saw a 53 s gap)."""
    fake = await fakes.start("n1", loaded={"m": 100})
    prefill = fake.hold_prefill()
    resp = await open_stream(await gateway_over(fake), route)
    await wait(prefill.arrived)
    assert route.keepalive in await read_until(resp, route.keepalive)
    prefill.release()
    tail = await rest(resp)
    assert b"hello" in tail and route.done in tail, tail


@ROUTES
async def test_the_neurons_refusal_after_held_headers_is_a_status(fakes, gateway_over, route):
    """The neuron's headers are its verdict on the request (a long prompt's tokenising holds them back):
    the gateway commits nothing before them, so a refusal is a real status in the route's dialect, the
    400 Claude Code compacts on included. (A request the neuron makes wait for a slot, it keeps alive
    itself: tests/test_context_before_stream.py.)"""
    fake = await fakes.start("n1", loaded={"m": 100})
    openai_wording = ("This model's maximum context length is 2048 tokens. However, your messages resulted in "
                      "4000 tokens.")
    too_long = web.json_response({"error": {"message": openai_wording, "type": "invalid_request_error",
                                            "code": "context_length_exceeded", "param": "messages",
                                            "tokens": 4000, "maximum": 2048}}, status=400)
    queue = fake.hold_headers(refusal=too_long)
    gw = await gateway_over(fake)
    posting = asyncio.ensure_future(gw.client.post(route.path, json=body("m")))
    await wait(queue.arrived)
    queue.release()
    async with asyncio.timeout(DEADLINE):
        resp = await posting
    assert resp.status == 400, await resp.text()
    message = (await resp.json())["error"]["message"]
    assert message == ("prompt is too long: 4000 tokens > 2048 maximum" if route is ANTHROPIC else openai_wording)


async def test_anthropic_message_start_carries_the_prompt_size(fakes, gateway_over):
    fake = await fakes.start("n1", loaded={"m": 100})
    resp = await open_stream(await gateway_over(fake), ANTHROPIC)
    start = await read_until(resp, b"message_start")
    assert b'"input_tokens":3' in start, start
    await rest(resp)


async def test_concurrent_requests_for_a_cold_model_load_it_once(fakes, gateway_over):
    """Single flight: a second load of the same model would double its memory or fail for lack of it."""
    fake = await fakes.start("n1", available={"m": 100})
    load = fake.hold_loads()
    gw = await gateway_over(fake)
    resps = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=body("m")) for _ in range(5)))
    for resp in resps:  # a keep-alive on each: every request is now waiting for the model
        assert (await next_event(resp)).startswith(OPENAI.keepalive)
    await wait(load.arrived)
    load.release()
    for resp in resps:
        assert OPENAI.done in await rest(resp)
    assert fake.loads == ["m"]
    assert len(fake.chats) == 5
    assert gw.metric('cortex_cold_starts_total{model="m",node="n1"}') == 1
