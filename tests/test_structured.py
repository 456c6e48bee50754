"""Structured outputs, forced tool calls and logprobs, on both backends, through the official SDK.

The tiny models have random weights: whatever they write is noise, unless
decoding is constrained. So every answer here that parses and validates
against its schema was made to by the grammar, not by luck.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.neuron_inprocess import IN_MODULE_LOOP, streamed_text

BACKENDS = ["tiny-gguf", "tiny-hf"]
pytestmark = IN_MODULE_LOOP
HI = [{"role": "user", "content": "hi"}]
WORD = {"type": "string", "maxLength": 12}

SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": WORD, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
             "required": ["name", "age"]},
    "nested": {"type": "object", "required": ["user", "active"], "properties": {
        "user": {"type": "object", "required": ["id", "address"], "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 9999},
            "address": {"type": "object", "required": ["city"], "properties": {"city": WORD, "zip": WORD}}}},
        "active": {"type": "boolean"}}},
    "arrays": {"type": "object", "required": ["tags", "matrix"], "properties": {
        "tags": {"type": "array", "items": WORD, "minItems": 1, "maxItems": 3},
        "matrix": {"type": "array", "maxItems": 2, "items": {
            "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": -5, "maximum": 5}}}}},
    "enums": {"type": "object", "required": ["color", "size", "fixed"], "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3, None]}, "fixed": {"const": "yes"}}},
    "numbers": {"type": "object", "required": ["ratio", "temp", "count"], "properties": {
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "temp": {"type": "number", "exclusiveMinimum": -40, "exclusiveMaximum": 60},
        "count": {"type": "integer", "minimum": 10, "maximum": 20}}},
    "union_and_refs": {"type": "object", "required": ["item"], "$defs": {"pet": {
        "type": "object", "required": ["kind", "name"],
        "properties": {"kind": {"enum": ["cat", "dog"]}, "name": WORD}}},
        "properties": {"item": {"anyOf": [{"$ref": "#/$defs/pet"}, {"type": "integer", "minimum": 0, "maximum": 9},
                                          {"type": "null"}]}}},
    "top_level_array": {"type": "array", "maxItems": 4, "items": {"type": "boolean"}},
}


@pytest.fixture(scope="module")
def client(inprocess_neuron):
    return inprocess_neuron.openai


def json_schema_format(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


@pytest.mark.parametrize("model", BACKENDS)
@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_random_weights_write_valid_json_under_a_schema(client, model, name):
    schema = SCHEMAS[name]
    for seed in (1, 2):
        resp = await client.chat.completions.create(model=model, messages=HI, max_tokens=400, seed=seed,
                                                    response_format=json_schema_format(schema))
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


@pytest.mark.parametrize("model", BACKENDS)
async def test_streamed_structured_output_validates(client, model):
    schema = SCHEMAS["nested"]
    text = await streamed_text(await client.chat.completions.create(
        model=model, messages=HI, max_tokens=400, seed=3, stream=True, response_format=json_schema_format(schema)))
    jsonschema.validate(json.loads(text), schema)


class Pet(BaseModel):
    name: str = Field(max_length=10)
    legs: int = Field(ge=0, le=8)
    kind: str = Field(pattern="^(cat|dog|bird)$")


@pytest.mark.parametrize("model", BACKENDS)
async def test_sdk_parse_returns_the_pydantic_object(client, model):
    """`client.chat.completions.parse(response_format=Model)`: the SDK's strict schema, enforced."""
    resp = await client.chat.completions.parse(model=model, messages=HI, max_tokens=200, seed=4, response_format=Pet)
    pet = resp.choices[0].message.parsed
    assert isinstance(pet, Pet) and 0 <= pet.legs <= 8 and pet.kind in ("cat", "dog", "bird")


@pytest.mark.parametrize("model", BACKENDS)
async def test_objects_without_additional_properties_are_closed(client, model):
    """Only the listed keys: otherwise a weak model may invent keys forever."""
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}}}
    for seed in range(3):
        content = await client.chat.completions.create(model=model, messages=HI, max_tokens=100, seed=seed,
                                                       response_format=json_schema_format(schema, strict=False))
        assert set(json.loads(content.choices[0].message.content)) <= {"a", "b"}


@pytest.mark.parametrize("feature, schema", [
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    ("not", {"not": {"type": "string"}}),
    ("contains", {"type": "array", "contains": {"type": "integer"}}),
])
async def test_a_schema_feature_that_cannot_be_enforced_is_a_400_naming_it(client, feature, schema):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="tiny-gguf", messages=HI, max_tokens=10,
                                             response_format=json_schema_format(schema))
    assert info.value.code == "unsupported_schema" and feature in str(info.value)


async def test_bad_response_format_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="tiny-gguf", messages=HI, response_format={"type": "xml"})
    assert "response_format" in str(info.value)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "required": ["city", "days"],
    "properties": {"city": WORD, "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "required": ["zone"], "properties": {"zone": {"enum": ["UTC", "CET"]}}}}}


@pytest.mark.parametrize("model", BACKENDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_choice_required_forces_a_valid_call(client, model, stream):
    kwargs = dict(model=model, messages=HI, max_tokens=200, seed=5, tools=[WEATHER, TIME], tool_choice="required")
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        async for chunk in await client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
        found = list(calls.values())
    else:
        choice = (await client.chat.completions.create(**kwargs)).choices[0]
        finish = choice.finish_reason
        found = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls]
    assert finish == "tool_calls" and len(found) == 1
    tool = {"get_weather": WEATHER, "get_time": TIME}[found[0]["name"]]
    jsonschema.validate(json.loads(found[0]["arguments"]), tool["function"]["parameters"])


@pytest.mark.parametrize("model", BACKENDS)
async def test_named_tool_choice_calls_that_tool(client, model):
    for seed in range(3):
        choice = (await client.chat.completions.create(
            model=model, messages=HI, max_tokens=200, seed=seed, tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}})).choices[0]
        [call] = choice.message.tool_calls
        assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("UTC", "CET")


async def test_tool_choice_naming_an_unknown_tool_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="tiny-gguf", messages=HI, tools=[WEATHER],
                                             tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "nope" in str(info.value) and "tool_choice" in str(info.value)


@pytest.mark.parametrize("model", BACKENDS)
async def test_parallel_tool_calls_false_keeps_one_call(client, model):
    two = ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    both = await client.chat.completions.create(model=model, messages=HI, tools=[TIME],
                                                extra_body={"cortex_script": two})
    one = await client.chat.completions.create(model=model, messages=HI, tools=[TIME], parallel_tool_calls=False,
                                               extra_body={"cortex_script": two})
    assert len(both.choices[0].message.tool_calls) == 2 and len(one.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("model", BACKENDS)
async def test_chat_logprobs(client, model):
    resp = await client.chat.completions.create(model=model, messages=HI, max_tokens=6, temperature=0, logprobs=True,
                                                top_logprobs=3, logit_bias={"0": -100, "2": -100})
    entries = resp.choices[0].logprobs.content
    assert len(entries) == resp.usage.completion_tokens == 6
    joined = "".join(e.token for e in entries)
    if "\ufffd" not in joined:  # a token that is part of a character shows as U+FFFD alone
        assert joined == resp.choices[0].message.content
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and all(p <= 0 for p in tops)
        assert e.logprob == pytest.approx(tops[0], abs=1e-4)  # greedy: the chosen token is the likeliest
        assert bytes(e.bytes).decode(errors="replace") == e.token


@pytest.mark.parametrize("model", BACKENDS)
async def test_streamed_logprobs_cover_every_token(client, model):
    chunks = [c async for c in await client.chat.completions.create(
        model=model, messages=HI, max_tokens=8, seed=1, logprobs=True, stream=True,
        stream_options={"include_usage": True}, logit_bias={"0": -100, "2": -100})]
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens == 8
    assert all(e.top_logprobs == [] for e in entries)


@pytest.mark.parametrize("model", BACKENDS)
async def test_completion_logprobs_in_the_legacy_shape(client, model):
    resp = await client.completions.create(model=model, prompt="The quick brown", max_tokens=4, temperature=0,
                                           logprobs=2, logit_bias={"0": -100, "2": -100})
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    if "\ufffd" not in "".join(lp.tokens):
        assert "".join(lp.tokens) == resp.choices[0].text
    assert all(len(top) <= 2 for top in lp.top_logprobs)


async def test_no_logprobs_unless_asked(client):
    resp = await client.chat.completions.create(model="tiny-gguf", messages=HI, max_tokens=3)
    assert resp.choices[0].logprobs is None


@pytest.mark.parametrize("model", BACKENDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_cut_by_max_tokens_is_a_call_not_markup(client, model, stream):
    """OpenAI sends a cut-off call as tool_calls with the arguments it got and finish_reason length."""
    script = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
    # 30 tokens of the tiny models' tokenizer end inside the arguments, after {"city": "Paris", "
    kwargs = dict(model=model, messages=HI, tools=[WEATHER], max_tokens=30, extra_body={"cortex_script": script})
    if stream:
        chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs) if c.choices]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        names = [t.function.name for c in chunks for t in c.choices[0].delta.tool_calls or [] if t.function.name]
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = (await client.chat.completions.create(**kwargs)).choices[0]
        content, finish = choice.message.content or "", choice.finish_reason
        names = [t.function.name for t in choice.message.tool_calls or []]
    assert "<tool_call>" not in content and "name" not in content
    assert names == ["get_weather"] and finish == "length"
