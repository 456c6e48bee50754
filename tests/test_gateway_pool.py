"""The gateway's connections to a neuron are bounded below the neuron's per-client cap (issue 20, finding 9).

The gateway is one client address to every neuron, and a neuron closes connections beyond its
`max_connections_per_client` before reading a byte. With an unbounded pool, 1,050 concurrent
requests made the neuron reset connections, the gateway marked the node down and 28 requests got
503. Now `[gateway] max_connections_per_node` bounds the relays' connections per node (requests
beyond it wait for one), polls and loads have a pool of their own, and a connection a live node
closes or resets is not counted against the node.
"""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from cortex_gateway.config import CONTROL_CONNECTIONS_PER_NODE, GatewayConfig, load_config
from cortex_gateway.state import FLEET
from neuron.shared.config import ConfigError, NeuronConfig
from tests.helpers import NO_EOS, http_json, metric, start_gateway, start_neuron, wait_for

MODEL = "tiny-gguf"
NEURON_CAP = 12  # the neuron's max_connections_per_client in this test
PER_NODE = 4  # the gateway's bound, below it with room for polls
REQUESTS = 30  # more than the neuron's cap


def test_the_default_bound_and_its_check(tmp_path):
    assert GatewayConfig().max_connections_per_node == 512
    neuron_cap = NeuronConfig().max_connections_per_client
    path = tmp_path / "cortex.toml"
    for bad in (0, -1, neuron_cap, neuron_cap - CONTROL_CONNECTIONS_PER_NODE + 1, '"many"'):
        path.write_text(f"[gateway]\nmax_connections_per_node = {bad}\n")
        with pytest.raises(ConfigError, match="max_connections_per_node"):
            load_config(path)
    path.write_text(f"[gateway]\nmax_connections_per_node = {neuron_cap - CONTROL_CONNECTIONS_PER_NODE}\n")
    assert load_config(path).max_connections_per_node == neuron_cap - CONTROL_CONNECTIONS_PER_NODE


class HeldStream:
    """A streaming chat through the gateway that holds the model's only slot until closed."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = {"model": MODEL, "stream": True, "max_tokens": 1500, "logit_bias": NO_EOS, "temperature": 1.0,
                "messages": [{"role": "user", "content": "go"}]}
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        while b'"content":"' not in self.resp.readline():  # generating: the slot is taken
            pass

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def capped(tmp_path, models_dir):
    (tmp_path / "neuron.toml").write_text(f"[neuron]\nmax_connections_per_client = {NEURON_CAP}\n")
    neuron = start_neuron(tmp_path, models_dir, "--config", str(tmp_path / "neuron.toml"))
    gateway = None
    try:
        load = {"model": MODEL, "max_in_flight": 1, "max_queue_depth": 64, "max_wait_s": 600}
        assert http_json("POST", neuron.url + "/models/load", load)[0] == 200
        gateway = start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=f"max_connections_per_node = {PER_NODE}")
        yield gateway, neuron
    finally:
        if gateway is not None:
            gateway.terminate()
        neuron.terminate()


def test_more_concurrent_requests_than_the_neurons_cap_all_succeed(capped):
    gateway, neuron = capped
    http_json("POST", neuron.url + "/debug/faults", {"model": MODEL, "fault": "slow", "delay_ms": 20})
    held = HeldStream(gateway.url)
    results: list[tuple[int, dict]] = []
    done = threading.Event()

    def ask() -> None:
        results.append(http_json("POST", gateway.url + "/v1/chat/completions", {
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
        done.set()

    threads = [threading.Thread(target=ask) for _ in range(REQUESTS)]
    try:
        for t in threads:
            t.start()
        # Every request is in the gateway (all waiting behind the held one), or one has already ended (as
        # before the bound, when the neuron closed the connections past its cap and the node went down).
        wait_for(lambda: done.is_set() or metric(gateway, 'cortex_node_in_flight{node="n1"}') == REQUESTS + 1,
                 timeout=60, what="every request to reach the gateway")
    finally:
        held.close()
        for t in threads:
            t.join(120)
    assert len(results) == REQUESTS
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {REQUESTS} failed, e.g. {failed[0]}"
    nodes = http_json("GET", gateway.url + "/admin/status")[1]["nodes"]
    assert nodes[0]["healthy"] and nodes[0]["failures"] == 0
    assert "node_down" not in gateway.log()


# -- a live node that drops connections is not a failed node ----------------------------------------
@pytest.fixture
def one_fake(fakes, gateway_over):
    """`await one_fake(failures)`: a fake neuron failing so, and the gateway's test client over it alone."""

    async def start(failures: list[str]):
        fake = await fakes.start("n1", loaded={"m": 100}, failures=failures)
        return fake, (await gateway_over(fake, down_after=1)).client

    return start


async def test_a_live_node_that_drops_connections_is_tried_again_not_marked_down(one_fake):
    """It answers its health check, so it refused us (its connection cap), it did not fail: with
    down_after = 1, counting it once used to take the only node down and answer 503."""
    fake, client = await one_fake(failures=["drop", "drop"])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    assert fake.failed == ["drop", "drop"] and len(fake.chats) == 3 and fake.loads == []
    node = client.server.app[FLEET].nodes["n1"]
    assert node.healthy and node.failures == 0
