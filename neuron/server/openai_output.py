"""What a request says its output must be: tools and tool_choice, response_format.

Parsed into typed objects here, at the edge, so the engine builds its
constraints (`neuron.engine.constraints`) from checked values only. Anything a
client can get wrong is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_bool

AUTO, NONE, REQUIRED = "auto", "none", "required"


@dataclass(frozen=True)
class ToolChoice:
    mode: str = AUTO  # auto | none | required
    name: str | None = None  # with mode required: the one function the model must call

    @property
    def forced(self) -> bool:
        return self.mode == REQUIRED


@dataclass(frozen=True)
class OutputFormat:
    kind: str  # json_object | json_schema (plain text needs no format)
    schema: dict | None = None
    name: str = ""
    strict: bool = False


def parse_tools(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("tools: expected a list of tools", param="tools")
    out = []
    for i, tool in enumerate(value):
        if isinstance(tool, dict) and tool.get("type") not in (None, "function"):
            raise bad_request(f"tools[{i}].type: {tool.get('type')!r} tools are not available here; only "
                              "function tools are", param="tools", code="unsupported_tool_type")
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}].function.name: required", param="tools")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise bad_request(f"tools[{i}].function.parameters: expected a JSON schema object", param="tools")
        out.append({"type": "function", "function": {
            "name": fn["name"], "description": fn.get("description") or "", "parameters": params}})
    return out or None


def parse_tool_choice(value: Any, tools: list[dict] | None) -> ToolChoice:
    """OpenAI's tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name"}}."""
    if value is None:
        return ToolChoice()
    if value in (AUTO, NONE, REQUIRED):
        choice = ToolChoice(value)
    elif isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict) \
            and isinstance(value["function"].get("name"), str):
        choice = ToolChoice(REQUIRED, value["function"]["name"])
    else:
        raise bad_request('tool_choice: expected "auto", "none", "required" or {"type": "function", '
                          '"function": {"name": ...}}', param="tool_choice")
    names = {t["function"]["name"] for t in tools or []}
    if choice.forced and not names:
        raise bad_request("tool_choice: requires a tool call but the request has no tools", param="tool_choice")
    if choice.name is not None and choice.name not in names:
        raise bad_request(f"tool_choice: function {choice.name!r} is not among the request's tools "
                          f"({', '.join(sorted(names))})", param="tool_choice")
    return choice


def parse_response_format(value: Any) -> OutputFormat | None:
    """`response_format`: text (no constraint), json_object, or json_schema {name, schema, strict}."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object", {"type": "object"})
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise bad_request("response_format.json_schema.name: required", param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema: expected a JSON schema object",
                              param="response_format")
        strict = opt_bool(spec, "strict", where="response_format.json_schema.strict")
        return OutputFormat("json_schema", schema or {}, spec["name"], strict)
    raise bad_request('response_format.type: expected "text", "json_object" or "json_schema"',
                      param="response_format")
