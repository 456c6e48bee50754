"""Bounds on what one request may ask of a server (issue 20, findings 12 and 13).

- Nesting: legal JSON 500 levels deep in a response_format schema, a tool's
  parameters or chat_template_kwargs was a 500 with a traceback (Python's
  recursion limit, in the walks and deep copies behind the routes). Both servers
  read every body through `neuron.shared.http.parse_json`, which refuses more than 64
  levels with a 400 that names the limit, in the route's dialect.
- Answer size: n=16 x top_logprobs=20 x long answers made a 41.6 MiB answer.
  The logprob entries of one answer are bounded: refused up front when
  max_tokens says they could not fit, stopped there when it says nothing.
"""

from __future__ import annotations

import pytest

from neuron.server.openai_schema import MAX_ANSWER_LOGPROBS
from neuron.shared.http import MAX_JSON_DEPTH
from tests.helpers import NO_EOS, http_json, start_gateway

MODEL = "tiny-gguf"
USER = [{"role": "user", "content": "hi"}]


def nested(levels: int) -> dict:
    """A JSON schema exactly `levels` JSON levels deep (each level of schema is two: itself and its
    properties)."""
    schema: dict = {"type": "string"} if levels % 2 else {"enum": ["a"]}
    for _ in range((levels - 1) // 2):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def depth(value) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(depth, children), default=0)


def deep_dict(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def tool(schema: dict) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": schema}}


DEEP_OPENAI = {
    "response_format": {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "deep", "schema": nested(500)}}},
    "tools": {"messages": USER, "tools": [tool(nested(500))]},
    "chat_template_kwargs": {"messages": USER, "chat_template_kwargs": {"opts": deep_dict(500)}},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, neuron):
    proc = start_gateway(tmp_path_factory.mktemp("limits-gateway"), {"n1": neuron.url})
    try:
        yield proc
    finally:
        proc.terminate()


def says_depth(status: int, body: dict, field: str) -> None:
    assert status == 400, body
    error = body["error"]
    assert f"more than {MAX_JSON_DEPTH} levels deep" in error["message"] and field in error["message"], error


@pytest.mark.parametrize("field", DEEP_OPENAI)
def test_deep_nesting_is_a_400_on_the_neuron_and_the_gateway(neuron, gateway, field):
    for server in (neuron, gateway):
        status, body = http_json("POST", server.url + "/v1/chat/completions",
                                 {"model": MODEL, "max_tokens": 1, **DEEP_OPENAI[field]})
        says_depth(status, body, field)
    status, body = http_json("POST", neuron.url + "/tokenize", {"model": MODEL, **DEEP_OPENAI[field]})
    says_depth(status, body, field)


def test_deep_nesting_is_a_400_in_the_anthropic_and_responses_dialects(gateway):
    messages = {"model": MODEL, "max_tokens": 1, "messages": USER,
                "tools": [{"name": "f", "input_schema": nested(500)}]}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, body = http_json("POST", gateway.url + path, messages)
        assert body.get("type") == "error", body
        says_depth(status, body, "tools")
    status, body = http_json("POST", gateway.url + "/v1/responses", {
        "model": MODEL, "input": "hi", "max_output_tokens": 16,
        "tools": [{"type": "function", "name": "f", "parameters": nested(500)}]})
    says_depth(status, body, "tools")


@pytest.mark.parametrize("levels, served", [(MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False)])
def test_nesting_up_to_the_limit_is_served(neuron, levels, served):
    """64 levels, the body included, are served; 65 are not."""
    body = {"model": MODEL, "max_tokens": 4, "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": nested(levels - 3)}}}
    assert depth(body) == levels
    status, answer = http_json("POST", neuron.url + "/v1/chat/completions", body)
    if served:
        assert status == 200, answer
    else:
        says_depth(status, answer, "response_format")


def test_logprobs_that_could_not_fit_one_answer_are_refused_up_front(neuron, gateway):
    body = {"model": MODEL, "messages": USER, "n": 16, "logprobs": True, "top_logprobs": 20, "max_tokens": 1000}
    for server in (neuron, gateway):
        status, answer = http_json("POST", server.url + "/v1/chat/completions", body)
        assert status == 400, answer
        error = answer["error"]
        assert error["param"] == "max_tokens" and f"over the {MAX_ANSWER_LOGPROBS}" in error["message"], error
        assert f"at most {MAX_ANSWER_LOGPROBS // (16 * 21)} tokens" in error["message"], error
    status, answer = http_json("POST", neuron.url + "/v1/completions", {
        "model": MODEL, "prompt": "hi", "n": 16, "logprobs": 5, "max_tokens": 2000})
    assert status == 400 and answer["error"]["code"] == "answer_too_large", answer


def test_logprobs_without_max_tokens_stop_where_one_answer_is_full(neuron):
    """No max_tokens: each choice would run to the end of the context (2,048 tokens here); it stops at
    the answer's bound instead, finish_reason "length"."""
    status, answer = http_json("POST", neuron.url + "/v1/chat/completions", {
        "model": MODEL, "messages": USER, "n": 16, "logprobs": True, "top_logprobs": 20, "logit_bias": NO_EOS,
        "temperature": 1, "seed": 3}, timeout=600)
    assert status == 200, answer
    per_choice = MAX_ANSWER_LOGPROBS // (16 * 21)
    entries = 0
    for choice in answer["choices"]:
        content = choice["logprobs"]["content"]
        assert len(content) <= per_choice and choice["finish_reason"] == "length", (len(content), choice)
        entries += sum(1 + len(e["top_logprobs"]) for e in content)
    assert entries <= MAX_ANSWER_LOGPROBS
