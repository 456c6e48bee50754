"""The gateway's real aiohttp app, in process, over fake neurons that hold and fail on cue.

The middle tier between the pure routing/eviction tests and the subprocess tests: the races those make flaky
(a load still running, a node dying between two chunks) are played step by step, synchronised by events. The
poller is set to an hour, so after the polls at startup the fleet view changes only through what the gateway
itself does; every wait has a deadline, so a regression fails instead of hanging. The fixtures (conftest's
`fakes` and `gateway_over`) stop everything however a test ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import openai
import pytest
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


class Fakes:
    """The fake neurons of one test, released and stopped however the test ends."""

    def __init__(self):
        self.started: list[FakeNeuron] = []

    async def start(self, name: str, **script) -> FakeNeuron:
        fake = FakeNeuron(name, **script)
        await fake.start()
        self.started.append(fake)
        return fake

    def release_all(self) -> None:
        for fake in self.started:
            fake.release_all()

    async def close(self) -> None:
        for fake in self.started:
            await fake.close()


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


def gateway_starter(aiohttp_client) -> Callable[..., Awaitable[Gateway]]:
    """`start(*fakes, **config)`: the gateway's app over the given fakes, under aiohttp's test client; `config`
    (GatewayConfig fields) over the tier's own defaults."""

    async def start(*fakes: FakeNeuron, **config) -> Gateway:
        defaults = dict(poll_interval_s=3600, keepalive_s=0.05, load_timeout_s=DEADLINE,
                        upstream_read_timeout_s=DEADLINE)
        config = GatewayConfig(neurons=[NeuronSpec(f.name, f.url) for f in fakes], **{**defaults, **config})
        metrics = GatewayMetrics()
        return Gateway(await aiohttp_client(create_app(config, metrics=metrics)), metrics)

    return start


# -- reading streams --------------------------------------------------------------------
async def open_stream(gw: Gateway, route: Route, model: str = "m"):
    resp = await gw.client.post(route.path, json=body(model))
    assert resp.status == 200
    return resp


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
