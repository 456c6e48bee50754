"""A metered request settles however it ends, over real processes (issue 24, item 4): a client that leaves
mid-stream is billed its prompt and what it was sent, a request the node refuses is billed nothing, and
either way nothing stays reserved; a budgeted request for a model no node has loaded is admitted once
its cold load says the model's context; a key's rpm limit answers with the -requests headers too."""

from __future__ import annotations

import http.client
import json

import openai
import pytest

from tests.helpers import NO_EOS, http_json, load_models, metric, start_gateway, start_neuron, wait_for
from tests.test_budgets_gateway import AUTH_TOML, USER, admin, make_key, oai, usage_of

MODEL = "tiny-gguf"
COLD = "tiny-short"  # on the node's disk, not loaded: the first request loads it


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("budget-ends")
    with start_neuron(root, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, (MODEL,))
        with start_gateway(root, {"n1": neuron.url}, extra_toml=AUTH_TOML) as gw:
            yield gw, neuron


def totals(gateway, name: str) -> tuple[int, int, int]:
    """(tokens billed, requests, tokens still reserved) of a key."""
    rows = usage_of(gateway, name)["usage"]
    return (sum(r["total_tokens"] for r in rows), sum(r["requests"] for r in rows),
            sum(r["reserved_tokens"] for r in rows))


def test_a_client_that_leaves_mid_stream_is_billed_what_it_was_sent(gateway):
    gw, neuron = gateway
    name, key = make_key(gw, budget_tokens=100_000, budget_window="1d")
    assert http_json("POST", neuron.url + "/debug/faults",
                     {"model": MODEL, "fault": "slow", "count": 1, "delay_ms": 25})[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    body = {"model": MODEL, "messages": USER, "max_tokens": 1000, "logit_bias": NO_EOS, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    assert resp.status == 200
    seen = 0
    while seen < 3:  # a few tokens, then the client goes
        line = resp.readline()
        seen += line.startswith(b"data: {") and b'"content"' in line
    conn.close()
    wait_for(lambda: totals(gw, name)[1] == 1, what="the abandoned stream settled")
    billed, requests, reserved = totals(gw, name)
    assert reserved == 0 and 3 <= billed < 1000, (billed, reserved)
    key_row = usage_of(gw, name)["keys"][0]
    assert key_row["settled_tokens"] == billed and key_row["reserved_tokens"] == 0


def test_a_request_the_node_refuses_is_billed_nothing(gateway):
    gw, _ = gateway
    name, key = make_key(gw, budget_tokens=100_000, budget_window="1d")
    with pytest.raises(openai.BadRequestError):
        oai(gw, key).chat.completions.create(model=MODEL, messages=USER, max_tokens=4,
                                             response_format={"type": "json_schema", "json_schema": {
                                                 "name": "bad", "schema": {"type": "no-such-type"}}})
    assert totals(gw, name) == (0, 1, 0)


def test_a_budgeted_request_for_a_cold_model_is_admitted_once_it_is_placed(gateway):
    gw, _ = gateway
    # Less than the cold model's context (64 tokens): its prompt is counted on the node it was loaded on.
    name, key = make_key(gw, budget_tokens=40, budget_window="1d")
    answer = oai(gw, key).chat.completions.create(model=COLD, messages=USER, max_tokens=4)
    assert totals(gw, name) == (answer.usage.total_tokens, 1, 0)
    status, body = admin(gw, "GET", "/status")
    assert status == 200 and any(m["id"] == COLD for n in body["nodes"] for m in n["models"])


def test_rpm_answers_carry_the_requests_headers_and_so_does_its_429(gateway):
    gw, _ = gateway
    name, key = make_key(gw, rpm=2)
    raw = oai(gw, key).chat.completions.with_raw_response
    first = raw.create(model=MODEL, messages=USER, max_tokens=2)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    raw.create(model=MODEL, messages=USER, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        raw.create(model=MODEL, messages=USER, max_tokens=2)
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert metric(gw, f'cortex_key_requests_total{{key="{name}"}}') == 2


def test_a_translated_stream_is_billed_what_it_reported_before_it_ends(gateway):
    import anthropic

    gw, _ = gateway
    name, key = make_key(gw, budget_tokens=100_000, budget_window="1d")
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=6, messages=USER) as stream:
        final = stream.get_final_message()
    usage = final.usage  # Anthropic's input_tokens leave out the prompt tokens read from the prefix cache
    reported = usage.input_tokens + (usage.cache_read_input_tokens or 0) + usage.output_tokens
    assert totals(gw, name) == (reported, 1, 0)
