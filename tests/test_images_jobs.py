"""Image jobs on a node (real processes): one job at a time per device with the others queued (as /health
shows), and a job whose client leaves is interrupted at its next step, freeing the device.

The client is a raw socket, so that it can leave mid-job; each wait is for an event the neuron reports (a
log line, a /health figure), never a length of time.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests.helpers import http_json, make_tiny, one_node_fleet, wait_for
from tests.test_images import generate, pngs

LONG = 150  # steps a job would take if never interrupted: many seconds, far longer than the test waits


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    models = tmp_path_factory.mktemp("image-jobs-models")
    make_tiny(models / "img", "hf", "--kind", "image")
    with one_node_fleet(tmp_path_factory.mktemp("image-jobs"), models, load=("img",)) as (gateway, neuron, _):
        yield gateway, neuron


def post_and_hold(proc, body: dict) -> socket.socket:
    """Send the request and keep the connection open without reading: closing it is the client leaving."""
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", proc.port))
    sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def load_of(neuron, model: str) -> dict:
    return next(m for m in http_json("GET", neuron.url + "/health")[1]["models"] if m["id"] == model)


def test_one_job_runs_the_next_queues_and_a_job_whose_client_leaves_stops(fleet):
    gateway, neuron = fleet
    body = {"model": "img", "prompt": "a long job", "size": "64x64", "steps": LONG, "seed": 1}
    first = post_and_hold(gateway, body)
    second = None
    try:
        wait_for(lambda: f": step 1/{LONG}" in neuron.log(), what="the first job's first step")
        running = wait_for(lambda: (m := load_of(neuron, "img"))["step"] >= 1 and m, what="the step in /health")
        assert running["steps"] == LONG and running["step"] < LONG  # progress while it runs
        second = post_and_hold(gateway, {**body, "seed": 2})
        wait_for(lambda: load_of(neuron, "img")["queue_depth"] == 1, what="the second job queued")
        assert load_of(neuron, "img")["in_flight"] == 1  # one image job per device slot
        second.close()
        wait_for(lambda: load_of(neuron, "img")["queue_depth"] == 0, what="the queued job gone with its client")
    finally:
        first.close()
        if second is not None:
            second.close()
    found = wait_for(lambda: re.search(rf"image job (\S+): cancelled by its client at step (\d+)/{LONG}", neuron.log()),
                     what="the running job cancelled")
    assert int(found[2]) < LONG
    wait_for(lambda: load_of(neuron, "img")["in_flight"] == 0, what="the slot freed")
    # The interrupted job ends at its next step on the device thread; then /health shows no job drawing.
    wait_for(lambda: (load_of(neuron, "img")["step"], load_of(neuron, "img")["steps"]) == (0, 0),
             what="no job drawing")
    assert len(pngs(generate(gateway, seed=1))) == 1  # the device is free again
    log = neuron.log()
    assert f"image job {found[1]}: step {LONG}/{LONG}" not in log  # interrupted: it never ran its last step
    assert "seed 2" not in log  # the queued job never started
