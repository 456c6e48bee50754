"""The gateway's real aiohttp app, in process, over fake neurons that hold and fail on cue.

The middle tier between the pure routing/eviction tests and the subprocess
tests: the races those make flaky (a load still running, a node dying
between two chunks) are played here step by step, synchronised by events.
The poller is set to an hour, so after the polls at startup the fleet view
changes only through what the gateway itself does; every wait has a
deadline, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cortex_gateway.app import create_app
from cortex_gateway.config import GatewayConfig, NeuronSpec
from cortex_gateway.metrics import GatewayMetrics
from tests.fake_neuron import FakeNeuron

DEADLINE = 5.0  # seconds any single step may take before the test fails


@dataclass(frozen=True)
class Route:
    """A streaming route and how it frames what the tests look for."""

    path: str
    keepalive: bytes  # the start of an event a waiting client must ignore
    done: bytes  # the start of the last event of a complete answer
    error: bytes  # the start of an in-stream error event


OPENAI = Route("/v1/chat/completions", keepalive=b":", done=b"data: [DONE]", error=b'data: {"error":')
ANTHROPIC = Route("/v1/messages", keepalive=b"event: ping", done=b"event: message_stop", error=b"event: error")
ROUTES = pytest.mark.parametrize("route", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])


def body(model: str, stream: bool = True) -> dict:
    """Valid for both routes: /v1/messages requires max_tokens."""
    return {"model": model, "stream": stream, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def open_stream(gw: Gateway, route: Route, model: str = "m"):
    resp = await gw.client.post(route.path, json=body(model))
    assert resp.status == 200
    return resp


# -- fixtures ---------------------------------------------------------------------------
class Neurons:
    """The fake neurons of one test, released and stopped however the test ends."""

    def __init__(self):
        self.started: list[FakeNeuron] = []

    async def start(self, name: str, **script) -> FakeNeuron:
        fake = FakeNeuron(name, **script)
        await fake.start()
        self.started.append(fake)
        return fake


@dataclass
class Gateway:
    client: TestClient
    metrics: GatewayMetrics

    def metric(self, sample: str) -> float:
        """One sample of the gateway's Prometheus text, e.g. 'cortex_retries_total{model="m"}'; 0 if absent."""
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=str(self.client.make_url("/v1")), api_key="unused", max_retries=0)


@pytest.fixture
async def neurons():
    fleet = Neurons()
    yield fleet
    for fake in fleet.started:
        await fake.close()


@pytest.fixture
async def gateway(aiohttp_client, neurons):
    """Starts the gateway over given fakes; held requests are released before it shuts down."""

    async def start(*fakes: FakeNeuron) -> Gateway:
        config = GatewayConfig(neurons=[NeuronSpec(f.name, f.url) for f in fakes], poll_interval_s=3600,
                               keepalive_s=0.05, load_timeout_s=DEADLINE, upstream_read_timeout_s=DEADLINE)
        metrics = GatewayMetrics()
        return Gateway(await aiohttp_client(create_app(config, metrics=metrics)), metrics)

    yield start
    for fake in neurons.started:
        fake.release_all()


# -- reading streams --------------------------------------------------------------------
async def next_event(resp) -> bytes:
    """One SSE event (its lines, without the blank line ending it); b"" at the end of the stream."""
    lines = []
    async with asyncio.timeout(DEADLINE):
        while (line := await resp.content.readline()) not in (b"\n", b""):
            lines.append(line)
    return b"".join(lines)


async def read_until(resp, marker: bytes) -> bytes:
    """Events up to and including the first one holding `marker`."""
    seen = b""
    while marker not in seen:
        got = await next_event(resp)
        assert got, f"stream ended before {marker!r}; got {seen!r}"
        seen += got + b"\n"
    return seen


async def rest(resp) -> bytes:
    """Everything left, up to the end of the response (so the handler has finished)."""
    async with asyncio.timeout(DEADLINE):
        return await resp.read()


async def complete(gw: Gateway, model: str) -> dict:
    """A non-streaming chat completion that must succeed."""
    resp = await gw.client.post("/v1/chat/completions", json=body(model, stream=False))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def wait(flag: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE):
        await flag.wait()


# -- failures before the answer -----------------------------------------------------------
@pytest.mark.parametrize("failure", ["drop", "recovering"])
async def test_node_failing_before_answering_is_retried_on_another(neurons, gateway, failure):
    """The client must never see a failure no byte of which reached it: the gateway retries elsewhere.

    Both fakes share one failure script, so whichever node the gateway picks first fails. A dropped
    connection is sent again once on the same node first (it is most often an idle connection the node
    closed), so a node that keeps dropping drops twice.
    """
    expected = [failure] * (2 if failure == "drop" else 1)
    script = list(expected)  # consumed as the fakes fail
    first = await neurons.start("n1", loaded={"m": 100}, failures=script)
    second = await neurons.start("n2", loaded={"m": 100}, failures=script)
    gw = await gateway(first, second)
    async with gw.openai() as client:
        answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    failed, answered = (first, second) if first.failed else (second, first)
    assert failed.failed == expected and len(failed.chats) == len(expected)
    assert answer.choices[0].message.content == f"hello from {answered.name}"
    assert len(answered.chats) == 1
    assert gw.metric('cortex_retries_total{model="m"}') == 1


async def test_a_connection_dropped_once_by_a_healthy_node_is_sent_again_there(neurons, gateway):
    """An idle pooled connection the node closes as we send on it is no reason to call the node unusable:
    on a one-node fleet that became a 503 (seen with real clients)."""
    only = await neurons.start("n1", loaded={"m": 100}, failures=["drop"])
    gw = await gateway(only)
    answer = await complete(gw, "m")
    assert answer["choices"][0]["message"]["content"] == "hello from n1" and len(only.chats) == 2
    assert gw.metric('cortex_retries_total{model="m"}') == 0


async def test_unreachable_node_fails_over_to_another(neurons, gateway):
    """A node whose server is gone is skipped within the same request, not after polls notice."""
    dead = await neurons.start("n1", loaded={"m": 100})
    alive = await neurons.start("n2", loaded={"m": 100})
    alive.reported_in_flight["m"] = 3  # busier as polled, so the gateway tries the dead node first
    gw = await gateway(dead, alive)
    await dead.close()
    answer = await complete(gw, "m")
    assert answer["choices"][0]["message"]["content"] == "hello from n2"
    assert gw.metric('cortex_retries_total{model="m"}') == 1  # proves the dead node was tried


# -- cold loads -------------------------------------------------------------------------
@ROUTES
async def test_stream_gets_keepalives_while_its_model_loads(neurons, gateway, route):
    """A cold load can take minutes; proxies drop a silent connection, so the gateway must speak first."""
    fake = await neurons.start("n1", available={"m": 100})
    load = fake.hold_loads()
    resp = await open_stream(await gateway(fake), route)
    first = await next_event(resp)
    assert first.startswith(route.keepalive), first
    await wait(load.arrived)
    assert "m" not in fake.loaded and not fake.chats  # the load is still held
    load.release()
    tail = await rest(resp)
    assert b"hello" in tail and route.done in tail, tail
    assert fake.loads == ["m"]


@ROUTES
async def test_the_neurons_prefill_keepalives_reach_the_client(neurons, gateway, route):
    """A long prompt prefills for a while; the neuron's `: keep-alive` arrives as the route's own keep-alive
    (an Anthropic `ping`), or clients with stall detection give up (Claude Code saw a 53 s gap)."""
    fake = await neurons.start("n1", loaded={"m": 100})
    prefill = fake.hold_prefill()
    resp = await open_stream(await gateway(fake), route)
    await wait(prefill.arrived)
    assert route.keepalive in await read_until(resp, route.keepalive)
    prefill.release()
    tail = await rest(resp)
    assert b"hello" in tail and route.done in tail, tail


@ROUTES
async def test_the_neurons_refusal_after_held_headers_is_a_status(neurons, gateway, route):
    """The neuron's headers are its verdict on the request (a long prompt's tokenising holds them back):
    the gateway commits nothing before them, so a refusal is a real status in the route's dialect, the
    400 Claude Code compacts on included. (A request the neuron makes wait for a slot, it keeps alive
    itself: tests/test_context_before_stream.py.)"""
    fake = await neurons.start("n1", loaded={"m": 100})
    openai_wording = ("This model's maximum context length is 2048 tokens. However, your messages resulted in "
                      "4000 tokens.")
    too_long = web.json_response({"error": {"message": openai_wording, "type": "invalid_request_error",
                                            "code": "context_length_exceeded", "param": "messages",
                                            "tokens": 4000, "maximum": 2048}}, status=400)
    queue = fake.hold_headers(refusal=too_long)
    gw = await gateway(fake)
    posting = asyncio.ensure_future(gw.client.post(route.path, json=body("m")))
    await wait(queue.arrived)
    queue.release()
    async with asyncio.timeout(DEADLINE):
        resp = await posting
    assert resp.status == 400, await resp.text()
    message = (await resp.json())["error"]["message"]
    assert message == ("prompt is too long: 4000 tokens > 2048 maximum" if route is ANTHROPIC else openai_wording)


async def test_anthropic_message_start_carries_the_prompt_size(neurons, gateway):
    fake = await neurons.start("n1", loaded={"m": 100})
    resp = await open_stream(await gateway(fake), ANTHROPIC)
    start = await read_until(resp, b"message_start")
    assert b'"input_tokens":3' in start, start
    await rest(resp)


async def test_concurrent_requests_for_a_cold_model_load_it_once(neurons, gateway):
    """Single flight: a second load of the same model would double its memory or fail for lack of it."""
    fake = await neurons.start("n1", available={"m": 100})
    load = fake.hold_loads()
    gw = await gateway(fake)
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


# -- failures mid-answer --------------------------------------------------------------------
@ROUTES
async def test_node_dying_mid_stream_ends_the_stream_with_an_error(neurons, gateway, route):
    """Bytes already reached the client, so no retry: the client must learn the answer is cut, not hang."""
    fake = await neurons.start("n1", loaded={"m": 100})
    death = fake.die_mid_stream()
    gw = await gateway(fake)
    resp = await open_stream(gw, route)
    await read_until(resp, b"from")  # the first two pieces reached the client...
    await wait(death.arrived)
    death.release()  # ...then the node dies
    tail = await rest(resp)
    assert b'"n1"' not in tail  # the third piece never came
    assert tail.startswith(route.error), tail
    if route is OPENAI:
        assert b'"code":"upstream_failed"' in tail and tail.rstrip().endswith(OPENAI.done), tail
    assert gw.metric('cortex_errors_total{model="m",node="n1",type="upstream_failed"}') == 1


# -- eviction ---------------------------------------------------------------------------
async def crowded_node(neurons, gateway, busy: set[str]) -> FakeNeuron:
    """A node with m1 and m2 loaded and room for m3 only after an eviction; m2 used first, so LRU.

    Its polls keep showing m2 in flight, as a poll taken mid-request would; `busy` says whether m2
    really is (requests from elsewhere, which only the node knows about).
    """
    fake = await neurons.start("n1", loaded={"m1": 400, "m2": 400}, available={"m3": 300}, total_mb=1000)
    fake.reported_in_flight["m2"] = 1
    fake.busy = busy
    gw = await gateway(fake)
    for model in ("m2", "m1", "m3"):
        await complete(gw, model)
    return fake


# Regression test for a known bug (eviction trusted a polled in_flight): fails on code without the fix.
async def test_eviction_trusts_the_gateways_own_in_flight_over_a_stale_poll(neurons, gateway):
    """KNOWN BUG: the least recently used model must be evicted even when a stale poll shows it busy.

    Once a request is over, the gateway's own count (exact) says idle while a poll taken during it
    (up to a poll interval old) still says busy; trusting the poll protects the LRU model and
    evicts a warmer one instead.
    """
    fake = await crowded_node(neurons, gateway, busy=set())
    assert [u["model"] for u in fake.unloads] == ["m2"]
    assert set(fake.loaded) == {"m1", "m3"}


async def test_eviction_passes_over_a_model_the_node_finds_busy(neurons, gateway):
    """Only the node knows requests that came from elsewhere: asked to unload `if_idle`, it refuses
    (409 model_busy) and the gateway must evict the next model in order instead of failing."""
    fake = await crowded_node(neurons, gateway, busy={"m2"})
    assert [(u["model"], u.get("if_idle")) for u in fake.unloads] == [("m2", True), ("m1", True)]
    assert set(fake.loaded) == {"m2", "m3"}


# -- metrics of refused and unknown requests -------------------------------------------------------
async def test_requests_refused_before_dispatch_are_counted(neurons, gateway):
    gw = await gateway(await neurons.start("n1", loaded={"m": 100}))
    resp = await gw.client.post("/v1/messages", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await gw.client.post("/v1/chat/completions", json={"messages": []})  # no model
    assert resp.status == 400
    assert gw.metric('cortex_requests_total{endpoint="messages",model="unknown",node="none",status="400"}') == 1
    assert gw.metric('cortex_requests_total{endpoint="chat",model="unknown",node="none",status="400"}') == 1


async def test_a_model_name_the_catalog_does_not_know_is_one_label(neurons, gateway):
    """Any client can send any name: as labels they would make unbounded series."""
    gw = await gateway(await neurons.start("n1", loaded={"m": 100}))
    for name in ("made-up-1", "made-up-2"):
        resp = await gw.client.post("/v1/chat/completions", json=body(name, stream=False))
        assert resp.status == 404
    text = gw.metrics.render().decode()
    assert "made-up" not in text
    assert gw.metric('cortex_requests_total{endpoint="chat",model="unknown",node="none",status="404"}') == 2


async def test_a_drained_node_takes_nothing_new_and_finishes_what_it_has(neurons, gateway):
    """`cortex drain`: an upgrade must not drop a request. What runs there finishes; new requests and cold
    loads go elsewhere; undrained, it takes requests again."""
    first = await neurons.start("n1", loaded={"m": 100}, available={"cold": 100})
    second = await neurons.start("n2", loaded={"m": 100}, available={"cold": 100})
    second.reported_in_flight["m"] = 5  # busier as polled: n1 is the one chosen while both take requests
    gw = await gateway(first, second)
    held = first.hold_prefill()  # a stream running on n1, held until the test lets it go on
    running = await open_stream(gw, OPENAI)
    await wait(held.arrived)
    drained = await gw.client.post("/admin/drain", json={"node": "n1"})
    assert (await drained.json()) == {"node": "n1", "draining": True, "in_flight": 1}
    for _ in range(3):
        assert (await complete(gw, "m"))["choices"][0]["message"]["content"] == "hello from n2"
    assert (await complete(gw, "cold"))["choices"][0]["message"]["content"] == "hello from n2"
    assert first.loads == [], "no cold load on a draining node"
    status = await (await gw.client.get("/admin/status")).json()
    assert next(n for n in status["nodes"] if n["name"] == "n1")["draining"] is True
    held.release()
    tail = await rest(running)
    assert b'"content":"n1"' in tail and OPENAI.done in tail, "the request running there finished"
    await gw.client.post("/admin/undrain", json={"node": "n1"})
    assert (await complete(gw, "m"))["choices"][0]["message"]["content"] == "hello from n1"


async def test_the_usage_is_read_however_the_stream_s_end_is_split():
    """On a busy machine the neuron's last write (finish, usage, [DONE]) arrives in many reads: the usage
    must still count (keeping the last two reads lost it, seen once in the Prometheus test)."""
    from cortex_gateway.metrics import RequestRecord
    from cortex_gateway.proxy import relay_stream

    end = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
           b': cortex-usage {"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}\n\ndata: [DONE]\n\n')
    pieces = [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'] + [end[i:i + 7]
                                                                                  for i in range(0, len(end), 7)]

    class Upstream:
        class content:  # noqa: N801 - aiohttp's attribute name
            @staticmethod
            async def iter_any():
                for piece in pieces:
                    yield piece

        def release(self):
            pass

    class Client:
        def __init__(self):
            self.sent = b""

        async def write(self, data):
            self.sent += data

    client, rec = Client(), RequestRecord(model="m", endpoint="chat", started=0.0)
    await relay_stream(Upstream(), client, rec)
    assert client.sent == b"".join(pieces) and (rec.prompt_tokens, rec.completion_tokens) == (5, 8)


async def test_the_relay_ends_at_done_without_waiting_for_the_upstreams_end():
    """A client closes as soon as it has [DONE], and a client that leaves cancels the handler: a relay still
    waiting for the neuron's end of stream then lost the usage and logged a 500 (seen once on a busy machine)."""
    from cortex_gateway.metrics import RequestRecord
    from cortex_gateway.proxy import relay_stream

    end = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
           b': cortex-usage {"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}\n\ndata: [DO')
    released = []

    class Upstream:
        class content:  # noqa: N801 - aiohttp's attribute name
            @staticmethod
            async def iter_any():
                yield b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
                yield end
                yield b"NE]\n\n"  # [DONE], split across reads
                await asyncio.Event().wait()  # the end of the stream, late: never, here

        def release(self):
            released.append(True)

    class Client:
        async def write(self, data):
            pass

    rec = RequestRecord(model="m", endpoint="chat", started=0.0)
    async with asyncio.timeout(5):
        await relay_stream(Upstream(), Client(), rec)
    assert (rec.prompt_tokens, rec.completion_tokens) == (5, 8) and rec.finished_at is not None and released
