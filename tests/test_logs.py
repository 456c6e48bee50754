"""Logs that join up: one request id on the gateway's lines and the neuron's, in every dialect's answers.

Real processes, as operators run them: `--log-format json` on both servers, a
keys file whose comments name the keys.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from tests.helpers import NO_EOS, http_json, one_node_fleet
from tests.helpers import wait_for as wait_until

KEY = "sk-test-alice-0001"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("logs")
    (root / "keys.txt").write_text(f"{KEY}  # alice\n")
    with one_node_fleet(root, models_dir, "--log-format", "json", extra_toml='[auth]\nkeys_file = "keys.txt"',
                        args=("--log-format", "json")) as (gateway, neuron, _):
        yield gateway, neuron


def call(method: str, url: str, headers: dict, body: dict | None = None) -> tuple[int, dict]:
    """(status, response headers) of a plain HTTP call."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def json_lines(proc) -> list[dict]:
    lines = proc.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def lines_of(proc, rid: str) -> list[dict]:
    return [line for line in json_lines(proc) if line.get("request_id") == rid]


def access_line(proc, rid: str) -> dict:
    found = [line for line in lines_of(proc, rid) if "path" in line and "status" in line]
    assert found, f"no access line for {rid} in {proc.log_path.name}"
    return found[-1]


def test_every_line_is_one_json_object(stack):
    for proc in stack:
        raw = [line for line in proc.log_path.read_text(errors="replace").splitlines() if line.strip()]
        assert raw and all(line.startswith("{") for line in raw), raw[:3]
        assert all({"time", "level", "logger", "message"} <= set(json.loads(line)) for line in raw)


@pytest.mark.parametrize("stream", [False, True])
def test_one_request_id_joins_the_gateway_and_neuron_lines(stack, stream):
    gateway, neuron = stack
    rid = f"client-chosen-{int(stream)}"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0,
                           default_headers={"X-Request-ID": rid})
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-gguf", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=stream)
    assert raw.headers["x-request-id"] == rid
    if stream:
        list(raw.parse())
    wait_until(lambda: lines_of(neuron, rid) and lines_of(gateway, rid), what="both servers log the request")
    seen = access_line(gateway, rid)
    assert seen["status"] == 200 and seen["model"] == "tiny-gguf" and seen["node"] == "n1"
    assert seen["completion_tokens"] > 0 and seen["duration_s"] > 0 and seen["key"] == "alice"
    assert seen["ttft_s"] is not None
    assert KEY not in gateway.log_path.read_text(), "the key itself is never logged"
    on_node = access_line(neuron, rid)
    assert on_node["status"] == 200 and on_node["model"] == "tiny-gguf" and on_node["path"] == "/v1/chat/completions"


def test_the_anthropic_and_responses_dialects_return_the_id_too(stack):
    gateway, _ = stack
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)
    raw = claude.messages.with_raw_response.create(model="tiny-gguf", max_tokens=3,
                                                   messages=[{"role": "user", "content": "hi"}])
    made = raw.headers["x-request-id"]
    assert made.startswith("req_"), "without one from the client, the gateway makes one"
    with claude.messages.with_streaming_response.create(model="tiny-gguf", max_tokens=3, stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]) as resp:
        assert resp.headers["x-request-id"].startswith("req_")
    status, headers = call("POST", gateway.url + "/v1/responses", {"Authorization": f"Bearer {KEY}",
                                                                   "X-Request-ID": "resp-1"},
                           {"model": "tiny-gguf", "input": "hi", "max_output_tokens": 3})
    assert status == 200 and headers["X-Request-ID"] == "resp-1"
    wait_until(lambda: lines_of(gateway, made), what="the made id in the gateway's log")


def test_a_refused_request_is_logged_with_its_status_and_id(stack):
    gateway, _ = stack
    status, headers = call("POST", gateway.url + "/v1/chat/completions", {"X-Request-ID": "bad-key-1"},
                           {"model": "tiny-gguf", "messages": []})
    assert status == 401 and headers["X-Request-ID"] == "bad-key-1"
    wait_until(lambda: lines_of(gateway, "bad-key-1"), what="the refusal's line")
    assert access_line(gateway, "bad-key-1")["status"] == 401


def test_an_unsafe_client_id_is_replaced(stack):
    gateway, _ = stack
    status, headers = call("GET", gateway.url + "/v1/models", {"X-Request-ID": "evil\" id",
                                                               "Authorization": f"Bearer {KEY}"})
    assert status == 200 and headers["X-Request-ID"].startswith("req_")


def test_the_gateways_polls_stay_out_of_the_neurons_info_log(stack):
    """The gateway polls each neuron every poll interval, forever: at info those lines would bury the
    requests. A poll that fails is still an info line."""
    gateway, neuron = stack
    assert call("GET", neuron.url + "/models/available", {})[0] == 200  # routine, as the gateway's polls
    status, _ = call("GET", neuron.url + "/models/nope", {})
    assert status == 404
    wait_until(lambda: any(line.get("path") == "/models/nope" for line in json_lines(neuron)),
               what="the failed GET's access line")
    routine = [line for line in json_lines(neuron)
               if line.get("path") in ("/health", "/models", "/models/available") and line.get("status") == 200]
    assert routine == [], routine[:3]
    assert next(line for line in json_lines(neuron) if line.get("path") == "/models/nope")["level"] == "info"


def test_a_client_that_leaves_mid_stream_is_logged_as_499_on_both_sides(stack):
    """Not as a 500: the servers did nothing wrong (nginx's status for a client that closed first)."""
    gateway, neuron = stack
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0,
                           default_headers={"X-Request-ID": "leaves-early"})
    # Each token takes 200 ms (fault injection): the stream is still running when the client leaves.
    armed = http_json("POST", neuron.url + "/debug/faults", {"model": "tiny-gguf", "fault": "slow", "delay_ms": 200})
    assert armed[0] == 200, armed
    stream = client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=50, stream=True, logit_bias=NO_EOS)
    next(iter(stream))
    stream.close()
    wait_until(lambda: any("status" in line for line in lines_of(gateway, "leaves-early"))
               and any("status" in line for line in lines_of(neuron, "leaves-early")), what="both access lines")
    assert access_line(gateway, "leaves-early")["status"] == 499
    assert access_line(neuron, "leaves-early")["status"] == 499
