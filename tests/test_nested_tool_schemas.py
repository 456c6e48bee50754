"""Forced tool calls whose parameters use `$defs` and local `$ref`s: what any nested pydantic model sends.

The openai SDK's `pydantic_function_tool`, instructor, litellm, pydantic-ai and the
Agents SDK all put nested models in `$defs`; a forced call embeds each tool's schema
under the call's `arguments`, where those references must still resolve.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from neuron.engine.schema_refs import embed_schemas
from tests.neuron_inprocess import IN_MODULE_LOOP

BACKENDS = ["tiny-gguf", "tiny-hf"]
HI = [{"role": "user", "content": "hi"}]


class Address(BaseModel):
    city: str = Field(max_length=10)


class Person(BaseModel):
    name: str = Field(max_length=10)
    home: Address


class Register(BaseModel):
    """Register people."""
    people: list[Person] = Field(max_length=2)


class Tree(BaseModel):
    label: str = Field(max_length=5)
    children: list[Tree] = Field(max_length=1)


SELF_REFERENCE = {"type": "object", "required": ["next"], "properties": {
    "next": {"anyOf": [{"type": "null"}, {"$ref": "#"}]}}}


def _resolves(embedded: dict, defs: dict, original: dict, value) -> None:
    """The embedded schema under the combined root accepts and refuses as the original does."""
    combined = {"$defs": defs, **embedded}
    jsonschema.validate(value, original)
    jsonschema.validate(value, combined)


@pytest.mark.parametrize("model", [Register, Tree])
def test_hoisted_definitions_validate_as_the_original(model):
    schema = model.model_json_schema()
    [embedded], defs = embed_schemas([schema], prefix="tool")
    assert "$defs" not in embedded and all(name.startswith("tool0.") for name in defs)
    good = {"people": [{"name": "a", "home": {"city": "b"}}]} if model is Register else \
        {"label": "x", "children": [{"label": "y", "children": []}]}
    _resolves(embedded, defs, schema, good)
    bad = {"people": [{"name": "a", "home": {}}]} if model is Register else {"label": "x", "children": [{}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, {"$defs": defs, **embedded})


def test_two_tools_with_the_same_definition_name_keep_their_own():
    one = {"type": "object", "$defs": {"X": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/X"}}}
    two = {"type": "object", "definitions": {"X": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/X"}}}
    (a, b), defs = embed_schemas([one, two], prefix="tool")
    assert defs == {"tool0.X": {"type": "integer"}, "tool1.X": {"type": "string"}}
    jsonschema.validate({"x": 1}, {"$defs": defs, **a})
    jsonschema.validate({"x": "s"}, {"$defs": defs, **b})


def test_a_reference_to_the_schema_root_points_at_its_copy():
    [embedded], defs = embed_schemas([SELF_REFERENCE], prefix="tool")
    assert defs["tool0"] == embedded
    _resolves(embedded, defs, SELF_REFERENCE, {"next": {"next": None}})


@pytest.fixture(scope="module")
def client(inprocess_neuron):
    return inprocess_neuron.openai


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_forced_call_with_nested_pydantic_parameters_validates(client, model):
    tools = [openai.pydantic_function_tool(Register), openai.pydantic_function_tool(Person)]
    for seed in (1, 2, 3):
        resp = await client.chat.completions.create(model=model, messages=HI, max_tokens=400, seed=seed,
                                                    tools=tools, tool_choice="required")
        [call] = resp.choices[0].message.tool_calls
        schema = {"Register": Register, "Person": Person}[call.function.name].model_json_schema()
        jsonschema.validate(json.loads(call.function.arguments), schema)


@IN_MODULE_LOOP
async def test_a_recursive_tool_schema_compiles(client):
    """Recursion through `#` is allowed; a random-weight model may recurse until max_tokens, so only the
    call's start is checked."""
    tool = {"type": "function", "function": {"name": "chain", "parameters": SELF_REFERENCE}}
    resp = await client.chat.completions.create(model="tiny-gguf", messages=HI, max_tokens=30, seed=2, tools=[tool],
                                                tool_choice={"type": "function", "function": {"name": "chain"}})
    [call] = resp.choices[0].message.tool_calls
    assert call.function.name == "chain" and call.function.arguments.startswith('{"next": ')
