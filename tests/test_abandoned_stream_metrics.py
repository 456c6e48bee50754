"""A stream the client abandons is counted under its real status, 499, with the tokens it was sent.

aiohttp cancels the handler of a client that leaves: the request used to be observed as it stood, a
status 200 with 0 tokens (its usage comes at the end of the stream, which never came), while the
access log said 499. Now `cortex_requests_total` counts it under 499, `cortex_errors_total` under
`client_closed`, and `cortex_tokens_total` the prompt and the output events relayed before the client
left, in every dialect. Real gateway and neuron; each token is slowed (fault injection) so the answer
is still streaming when the client closes.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request

import pytest

from tests.helpers import NO_EOS, http_json, metric, one_node_fleet

MODEL = "tiny-gguf"
READ_EVENTS = 5  # output events the client reads before it closes
ROUTES = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "tell me"}], "logit_bias": NO_EOS},
             b'"content":"'),
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": "tell me"}]}, b'"text_delta"'),
    "responses": ("/v1/responses", {"input": "tell me"}, b"response.output_text.delta"),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with one_node_fleet(tmp_path_factory.mktemp("abandoned"), models_dir, "--cpu-memory-mb", "2000",
                        load=(MODEL,)) as (gateway, neuron, _):
        yield gateway, neuron


def read_then_leave(gateway, path: str, body: dict, output: bytes) -> int:
    """Open the stream, read until READ_EVENTS output events came, close the connection; the events read."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        seen = 0
        while seen < READ_EVENTS:
            line = resp.fp.readline()
            assert line, "the stream ended before the client left: the test's answer was too short"
            seen += line.startswith(b"data:") and output in line and b'"content":""' not in line
        return seen
    finally:
        conn.close()


# Series as the exposition writes them: labels in alphabetical order.
def series(route: str, status: str) -> str:
    return f'cortex_requests_total{{endpoint="{route}",model="{MODEL}",node="n1",status="{status}"}}'


def tokens(kind: str) -> str:
    return f'cortex_tokens_total{{kind="{kind}",model="{MODEL}",node="n1"}}'


def wait_for(gateway, name: str, value: float, deadline_s: float = 60, neuron=None) -> None:
    deadline = time.monotonic() + deadline_s
    while metric(gateway, name) < value:
        assert time.monotonic() < deadline, f"{name} never reached {value}: {metric(gateway, name)}\n" + \
            seen(gateway, name) + ("\nneuron log:\n" + neuron.log_tail() if neuron else "")
        time.sleep(0.1)


def seen(gateway, name: str) -> str:
    """What the gateway counted for the route instead, and its log's end: the cause of a miss, not just the miss."""
    route = name.partition('endpoint="')[2].partition('"')[0]
    text = urllib.request.urlopen(gateway.metrics_url).read().decode()
    counted = [line for line in text.splitlines() if line.startswith("cortex_requests_total{") and
               f'endpoint="{route}"' in line]
    return "counted: " + "; ".join(counted) + "\ngateway log:\n" + gateway.log_tail()


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_abandoned_stream_counts_as_499_with_what_it_was_sent(fleet, route):
    gateway, neuron = fleet
    path, extra, output = ROUTES[route]
    before = {k: metric(gateway, tokens(k)) for k in ("prompt", "completion")}
    ok_before = metric(gateway, series(route, "200"))
    closed_before = metric(gateway, f'cortex_errors_total{{model="{MODEL}",node="n1",type="client_closed"}}')
    assert http_json("POST", neuron.url + "/debug/faults",
                     {"model": MODEL, "fault": "slow", "count": 1, "delay_ms": 25})[0] == 200
    # Greedy: the tiny model's 512-token vocabulary makes an end token likely within a few hundred tokens
    # at temperature 1, and only the chat route can ban it (logit_bias); a stream that ended by itself
    # before the client left is served (200), not abandoned. Greedy, this prompt runs to max_tokens in
    # every dialect.
    body = {"model": MODEL, "stream": True, "max_tokens": 1500, "temperature": 0.0, **extra}
    if route == "responses":
        body["max_output_tokens"] = body.pop("max_tokens")
    read = read_then_leave(gateway, path, body, output)
    wait_for(gateway, series(route, "499"), 1, neuron=neuron)
    assert metric(gateway, series(route, "200")) == ok_before, "counted as served too"
    assert metric(gateway, f'cortex_errors_total{{model="{MODEL}",node="n1",type="client_closed"}}') == \
        closed_before + 1
    assert metric(gateway, tokens("completion")) - before["completion"] >= read
    assert metric(gateway, tokens("prompt")) - before["prompt"] > 0
