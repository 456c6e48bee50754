"""A prompt too long for the model is a real HTTP 400 even on a busy node (issue 20, finding 10).

On a node whose slots are all taken, the gateway used to open the client's stream for keep-alives
while the request queued; the neuron only tokenised the prompt once it had a slot, so a prompt
found too long reached the client inside a 200 stream, not as the 400 Claude Code compacts on
(`prompt is too long: N tokens > M maximum`). Now the neuron checks the prompt before it queues,
and the gateway commits nothing to the client until the neuron's headers (its verdict) arrive;
a request that queues is kept alive by the neuron, after its check.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re

import pytest

from neuron.engine.admission import Admission
from neuron.shared.config import AdmissionLimits
from tests.helpers import NO_EOS, http_json, one_node_fleet

MODEL = "tiny-gguf"  # context 2048
TOO_LONG = "hello world " * 1500  # well over 2048 tokens, well under the neuron's character bound


class Stream:
    """A streaming POST through the gateway, read line by line on demand, closed by the test."""

    def __init__(self, url: str, path: str, body: dict):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()

    def line(self) -> bytes:
        return self.resp.readline()

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("busy")
    load = {"model": MODEL, "max_in_flight": 1, "max_queue_depth": 8, "max_wait_s": 600}
    with one_node_fleet(root, models_dir, load=(load,)) as (gateway, neuron, _):  # keep-alives every 0.5 s
        yield gateway, neuron


@pytest.fixture
def busy(stack):
    """The model's only slot held by a long generation, until the test ends."""
    gateway, neuron = stack
    http_json("POST", neuron.url + "/debug/faults", {"model": MODEL, "fault": "slow", "delay_ms": 20})
    held = Stream(gateway.url, "/v1/chat/completions", {
        "model": MODEL, "stream": True, "max_tokens": 1500, "logit_bias": NO_EOS, "temperature": 1.0,
        "messages": [{"role": "user", "content": "go"}]})
    try:
        assert held.resp.status == 200
        while b'"content":"' not in held.line():  # generating: the slot is taken
            pass
        yield gateway.url
    finally:
        held.close()


ROUTES = {
    "/v1/messages": {"max_tokens": 8},
    "/v1/chat/completions": {},
    "/v1/responses": {},
}


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_prompt_too_long_for_a_busy_model_is_a_400(busy, path):
    key = "input" if path == "/v1/responses" else "messages"
    content = TOO_LONG if path == "/v1/responses" else [{"role": "user", "content": TOO_LONG}]
    stream = Stream(busy, path, {"model": MODEL, "stream": True, key: content, **ROUTES[path]})
    try:
        assert stream.resp.status == 400, stream.line()  # a 200 stream: its first line, a keep-alive
        body = stream.resp.read()
    finally:
        stream.close()
    error = json.loads(body)["error"]
    if path == "/v1/messages":
        found = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", error["message"])
        assert found and int(found[2]) == 2048 < int(found[1]), error
    else:
        assert error["code"] == "context_length_exceeded" and "maximum context length is 2048" in error["message"]


@pytest.mark.parametrize("path, keepalive", [("/v1/chat/completions", b": keep-alive"),
                                             ("/v1/messages", b"event: ping")])
def test_a_request_that_queues_is_kept_alive_by_the_neuron(busy, path, keepalive):
    """Its prompt checked, a request waiting for a slot gets its stream and keep-alives from the neuron
    (translated by the gateway), so a client with stall detection does not give up."""
    stream = Stream(busy, path, {"model": MODEL, "stream": True, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]})
    try:
        assert stream.resp.status == 200
        while not (line := stream.line()).startswith(keepalive):
            assert not line.startswith(b"data: {\"choices\"") and b"content_block" not in line, line
    finally:
        stream.close()


# -- the neuron's wait for a slot, with keep-alives ---------------------------------------------------
async def test_a_queued_request_is_kept_alive_until_its_slot_comes():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=4, max_wait_s=60))
    calls = []
    async with adm.slot():
        holder_done = asyncio.Event()

        async def keepalive() -> None:  # the first keep-alive: the holder may now finish
            calls.append(1)
            holder_done.set()

        waiting = asyncio.ensure_future(adm.slot(keepalive, every=0.01).__aenter__())
        async with asyncio.timeout(10):
            await holder_done.wait()
    async with asyncio.timeout(10):
        await waiting
    assert calls and adm.in_flight == 1 and adm.queue_depth == 0


async def test_a_client_gone_during_a_keepalive_gives_up_its_place():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=4, max_wait_s=60))

    async def gone() -> None:
        raise ConnectionResetError("the client left")

    async with adm.slot():
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(10), adm.slot(gone, every=0.01):
                pass
        assert adm.queue_depth == 0
    assert adm.in_flight == 0
