"""`/v1/messages/count_tokens` goes through `dispatch` as a message does: placed, retried, recorded.

The gateway's real app in process, over fake neurons that count tokens (the
shared fake with a `/tokenize` route) and fail on cue.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cortex_gateway.app import create_app
from cortex_gateway.config import GatewayConfig, NeuronSpec
from cortex_gateway.metrics import GatewayMetrics
from tests.fake_neuron import FakeNeuron, error

COUNT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DEADLINE = 5.0


class CountingNeuron(FakeNeuron):
    """A fake neuron that also counts a chat request's tokens: a fixed count, or the failures scripted."""

    def __init__(self, name: str, **script):
        super().__init__(name, **script)
        self.counted: list[dict] = []
        self.refusal: web.Response | None = None  # answered instead of a count

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/tokenize", self._tokenize)
        return app

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.counted.append(body)
        if self.failures:
            return self._fail(request, self.failures.pop(0))
        if self.refusal is not None:
            return self.refusal
        return web.json_response({"model": body["model"], "count": 42})


@pytest.fixture
async def fleet(aiohttp_client):
    """Start fakes and a gateway over them; the client and its metrics. Everything stops however it ends."""
    started: list[CountingNeuron] = []

    async def start(*names: str, failures: list[str] | None = None):
        for name in names:
            fake = CountingNeuron(name, loaded={"m": 100.0}, failures=failures)
            await fake.start()
            started.append(fake)
        config = GatewayConfig(neurons=[NeuronSpec(f.name, f.url) for f in started], poll_interval_s=3600,
                               load_timeout_s=DEADLINE, upstream_read_timeout_s=DEADLINE)
        metrics = GatewayMetrics()
        return await aiohttp_client(create_app(config, metrics=metrics)), metrics, started

    try:
        yield start
    finally:
        for fake in started:
            await fake.close()


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (others any); 0 if none."""
    return sum(s.value for family in text_string_to_metric_families(metrics.render().decode())
               for s in family.samples if s.name == name and labels.items() <= s.labels.items())


async def test_a_count_is_placed_answered_and_recorded(fleet):
    client, metrics, (fake,) = await fleet("n1")
    resp = await client.post("/v1/messages/count_tokens", json=COUNT)
    assert resp.status == 200 and await resp.json() == {"input_tokens": 42}
    assert fake.counted[0]["model"] == "m" and fake.counted[0]["stream"] is False
    assert sample(metrics, "cortex_requests_total", model="m", node="n1", endpoint="count_tokens", status="200") == 1
    # A count makes no tokens: no time to first token, whatever its latency.
    assert sample(metrics, "cortex_time_to_first_token_seconds_count", model="m") == 0


async def test_a_count_a_node_cannot_serve_is_retried_on_another(fleet):
    client, metrics, fakes = await fleet("n1", "n2", failures=["recovering"])
    resp = await client.post("/v1/messages/count_tokens", json=COUNT)
    assert resp.status == 200 and await resp.json() == {"input_tokens": 42}
    assert sorted(len(f.counted) for f in fakes) == [1, 1] and sample(metrics, "cortex_retries_total", model="m") == 1


async def test_a_count_whose_nodes_all_fail_is_a_502_in_the_anthropic_envelope(fleet):
    client, metrics, _ = await fleet("n1", "n2", failures=["recovering", "recovering"])
    resp = await client.post("/v1/messages/count_tokens", json=COUNT)
    body = await resp.json()
    assert resp.status == 502 and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert resp.headers["Retry-After"] == "2"
    assert sample(metrics, "cortex_errors_total", model="m", type="upstream_unavailable") == 1


async def test_a_neurons_refusal_of_a_count_is_its_status_in_the_anthropic_envelope(fleet):
    client, metrics, (fake,) = await fleet("n1")
    fake.refusal = error(400, "context_length_exceeded", "messages: too long for the model's context")
    resp = await client.post("/v1/messages/count_tokens", json=COUNT)
    assert resp.status == 400 and (await resp.json())["error"] == {
        "type": "invalid_request_error", "message": "messages: too long for the model's context"}
    assert sample(metrics, "cortex_requests_total", model="m", node="n1", endpoint="count_tokens", status="400") == 1


async def test_a_count_refused_before_dispatch_is_counted(fleet):
    client, metrics, _ = await fleet("n1")
    resp = await client.post("/v1/messages/count_tokens", json={"messages": COUNT["messages"]})
    assert resp.status == 400 and (await resp.json())["type"] == "error"
    assert sample(metrics, "cortex_requests_total", model="unknown", endpoint="count_tokens", status="400") == 1
