"""A tool call cut by max_output_tokens: the response is incomplete, and so is the call's item.

OpenAI marks the item the limit cut `incomplete`; a client that runs every
`completed` function_call would otherwise run a call with half its arguments.
"""

from __future__ import annotations

import openai
import pytest
from openai.types.responses import Response

from cortex_gateway.responses.translate_request import to_chat
from cortex_gateway.responses.translate_response import ResponseHead, to_response
from tests.helpers import one_node_fleet
from tests.test_responses import CALL, WEATHER


def _answer(message: dict, finish: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}


def _call(call_id: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def test_the_cut_call_is_incomplete_and_those_before_it_complete():
    head = ResponseHead(to_chat({"model": "m", "input": "x", "tools": [WEATHER]}, []).echo)
    message = {"content": "Looking.", "tool_calls": [_call("call_1", '{"city": "Paris"}'),
                                                      _call("call_2", '{"city": "Li')]}
    resp = Response.model_validate(to_response(_answer(message, "length"), head))
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.status) for o in resp.output] == [
        ("message", "completed"), ("function_call", "completed"), ("function_call", "incomplete")]
    whole = Response.model_validate(to_response(_answer(message, "tool_calls"), head))
    assert {o.status for o in whole.output} == {"completed"}


@pytest.fixture(scope="module")
def client(tmp_path_factory, models_dir):
    with one_node_fleet(tmp_path_factory.mktemp("cut-call"), models_dir, "--cpu-memory-mb", "4000") as (gateway, _, _):
        yield openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_by_max_output_tokens_is_an_incomplete_item(client, stream):
    kwargs = dict(model="tiny-hf", input="weather in Paris?", tools=[WEATHER], tool_choice="required",
                  max_output_tokens=24, extra_body={"cortex_script": CALL})  # cut inside the arguments
    if stream:
        with client.responses.stream(**kwargs) as s:
            resp = list(s)[-1].response  # response.incomplete
    else:
        resp = client.responses.create(**kwargs)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    calls = [o for o in resp.output if o.type == "function_call"]
    assert calls and calls[-1].status == "incomplete", resp.output
