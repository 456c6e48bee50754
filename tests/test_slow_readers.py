"""Clients that never read their stream: a write that makes no progress for `write_timeout_s` ends the
request, on the neuron and on the gateway, and frees its slot (issue 20, finding 5).

aiohttp waits for a socket to drain only past its buffer's high-water mark, and before that the kernel
buffers hundreds of KB (the sender's buffer grows to tcp_wmem's maximum, 4 MiB by default). So the
clients here connect with a small receive buffer, read the status line (the request has its slot: an
event, not a sleep) and never read again, and the model writes several MiB: the tiny model with its
end-of-generation tokens banned and 20 top logprobs a token (about 1.5 KB of SSE a token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from cortex_gateway.app import create_app
from cortex_gateway.config import GatewayConfig, NeuronSpec
from cortex_gateway.state import FLEET
from tests.fake_neuron import FakeNeuron
from tests.helpers import NO_EOS, http_json, load_models, make_tiny, metric, start_gateway, start_neuron

# A stream's answer: about 7.5 MB with 20 top logprobs a token, within the neuron's bound on logprobs
# an answer may carry (n x max_tokens x 21 <= 131072).
TOKENS = 5000

# The streams stall once the model has written what the kernel buffers (about 3 MB): on a busy machine
# that takes a while, and a request queued behind them waits that long plus the deadline.
PATIENCE = 300


def flood(model: str) -> dict:
    """A request whose stream outgrows the kernel's buffers (a stream that fits would just finish)."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        wmem_max = 4 << 20
    if TOKENS * 1500 < 1.5 * wmem_max:
        pytest.skip(f"net.ipv4.tcp_wmem allows {wmem_max} bytes of send buffer: an answer the neuron allows "
                    "would fit in it, so no stream could stall here")
    return {"model": model, "stream": True, "max_tokens": TOKENS, "logit_bias": NO_EOS, "logprobs": True,
            "top_logprobs": 20, "messages": [{"role": "user", "content": "hi"}]}


SHORT = {"model": "long", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def never_reading(port: int, path: str, body: dict, request_id: str) -> socket.socket:
    """Send a streaming request, wait for its status line (the request holds its slot), then read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.settimeout(PATIENCE)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-ID: %s\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), request_id.encode(), len(data), data))
    head = sock.recv(12)
    assert head == b"HTTP/1.1 200", head
    return sock


def in_flight(neuron, model: str) -> int:
    models = http_json("GET", neuron.url + "/health")[1]["models"]
    return next(m["in_flight"] for m in models if m["id"] == model)


def wait_for(check, what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.1)


def stalled_lines(log: str, request_id: str) -> list[str]:
    return [line for line in log.splitlines()
            if "WARNING" in line and "write_timeout_s" in line and f"[{request_id}]" in line]


@pytest.fixture(scope="module")
def long_models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slow-models")
    make_tiny(d / "long.gguf", "gguf", "--context", "8192")
    return d


@contextlib.contextmanager
def neuron_with(tmp: Path, models_dir: Path, write_timeout_s: float, slots: int):
    """A neuron with these deadlines and slots, "long" loaded; stopped at the end, a failed load included."""
    (tmp / "neuron.toml").write_text(f"[neuron]\nwrite_timeout_s = {write_timeout_s}\n")
    with start_neuron(tmp, models_dir, "--config", str(tmp / "neuron.toml")) as proc:
        load_models(proc, ({"model": "long", "max_in_flight": slots, "parallel": slots, "max_wait_s": PATIENCE},))
        yield proc


def test_streams_that_are_never_read_end_on_the_neuron_and_free_their_slots(tmp_path, long_models):
    with neuron_with(tmp_path, long_models, write_timeout_s=2, slots=2) as neuron, contextlib.ExitStack() as socks:
        for i in range(2):
            socks.enter_context(never_reading(neuron.port, "/v1/chat/completions", flood("long"), f"stall-{i}"))
        assert in_flight(neuron, "long") == 2, "both slots are held"
        # Queued behind the two: served once a deadline ends one of them, not 503 after max_wait_s.
        status, body = http_json("POST", neuron.url + "/v1/chat/completions", SHORT, timeout=PATIENCE + 30)
        assert status == 200, body
        wait_for(lambda: in_flight(neuron, "long") == 0, "the slots come back")
        for i in range(2):
            assert stalled_lines(neuron.log(), f"stall-{i}"), neuron.log_tail()


def test_streams_that_are_never_read_end_on_the_gateway_and_free_the_nodes_slot(tmp_path, long_models):
    # The neuron's own deadline is far away: only the gateway's can free the slot in time.
    with (neuron_with(tmp_path, long_models, write_timeout_s=600, slots=1) as neuron,
          start_gateway(tmp_path, {"n1": neuron.url}, extra_toml="write_timeout_s = 2") as gateway,
          never_reading(gateway.port, "/v1/chat/completions", flood("long"), "gw-stall")):
        status, body = http_json("POST", gateway.url + "/v1/chat/completions", SHORT, timeout=PATIENCE + 30)
        assert status == 200, body
        wait_for(lambda: in_flight(neuron, "long") == 0, "the node's slot comes back")
        wait_for(lambda: metric(gateway, 'cortex_node_in_flight{node="n1"}') == 0, "the gateway's count")
        assert stalled_lines(gateway.log(), "gw-stall"), gateway.log_tail()


# -- every dialect's relay, in process, over a fake neuron that answers as fast as it can --------
class FloodingNeuron(FakeNeuron):
    def pieces(self) -> tuple[str, ...]:
        return ("x" * 4096,) * 4096  # 16 MiB of text, in 4 KiB pieces


ROUTES = {
    "openai": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "anthropic": ("/v1/messages", {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"input": "hi"}),
}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_dialects_stream_ends_when_its_client_stops_reading(aiohttp_server, caplog, route):
    fake = FloodingNeuron("n1", loaded={"m": 100.0})
    await fake.start()
    try:
        config = GatewayConfig(neurons=[NeuronSpec("n1", fake.url)], poll_interval_s=3600, write_timeout_s=0.5)
        app = create_app(config)
        server = await aiohttp_server(app)
        path, extra = ROUTES[route]
        sock = await _never_reading_async(server.port, path, {"model": "m", "stream": True, **extra})
        try:
            async with asyncio.timeout(60):
                await _until(lambda: fake.in_flight["m"] == 1)  # streaming
                # The gateway ended the client's stream and dropped the upstream request with it.
                await _until(lambda: fake.in_flight["m"] == 0 and not app[FLEET].in_flight_on("n1"))
        finally:
            sock.close()
    finally:
        await fake.close()
    stalled = [r for r in caplog.records if r.name == "cortex.shared.sse" and r.levelname == "WARNING"]
    assert stalled and "write_timeout_s" in stalled[0].getMessage()


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.02)


async def _never_reading_async(port: int, path: str, body: dict) -> socket.socket:
    """never_reading for a server in this event loop: the connect and send must not block it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    data = json.dumps(body).encode()
    await loop.sock_sendall(sock, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return sock
