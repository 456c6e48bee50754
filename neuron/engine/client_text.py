"""Which parts of a rendered chat prompt a client wrote: marked before rendering, split after.

Every string a client sent is its text, never control tokens: message contents,
tool-call ids, names and arguments, tool names and descriptions, and all of a
tool's parameter schema, property names (the JSON keys) and enum values and
titles included, and every string in `chat_template_kwargs`. Such a string is
wrapped in markers before the template renders it; after rendering, what lies
between markers is tokenised as plain text, the rest (the template's own
markup) with control tokens parsed.

The markers are a random tag, new for each request, made of ASCII digits and
punctuation that no escaping touches: `tojson` (with or without
`ensure_ascii`), Python's `repr` (a template that prints a dict), HTML escaping
and case changes all leave them as they are, and a client cannot type a tag it
never sees. (Unicode noncharacters, used before, come out of `repr` and
`ensure_ascii` as `\\ufdd0` escapes, so a template that prints tools that way
had every name parsed as markup.)

A few words stay unmarked, because templates branch on them and none holds a
control token: the JSON Schema keywords and type names (`param.type ==
"string"`, `parameters.properties`), and the names cortex itself gives (roles,
"function"). Equal client strings get equal marks, so a template that asks
`name in parameters.required` still finds the name.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

SCHEMA_WORDS = frozenset({
    # JSON Schema (2020-12 and draft 7) keywords, and OpenAPI's that tool schemas carry
    "$schema", "$id", "$ref", "$defs", "$anchor", "$comment", "definitions", "type", "enum", "const",
    "properties", "patternProperties", "additionalProperties", "propertyNames", "unevaluatedProperties",
    "required", "dependentRequired", "dependentSchemas", "minProperties", "maxProperties", "items",
    "prefixItems", "additionalItems", "unevaluatedItems", "contains", "minContains", "maxContains",
    "minItems", "maxItems", "uniqueItems", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
    "pattern", "format", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "nullable", "contentEncoding", "contentMediaType", "strict",
    # JSON Schema's type names
    "string", "number", "integer", "boolean", "object", "array", "null",
})


@dataclass(frozen=True)
class Segment:
    text: str
    special: bool  # parse control tokens in it (template markup) or not (what a client wrote)


@dataclass(frozen=True)
class Markers:
    open: str
    close: str

    @classmethod
    def new(cls) -> Markers:
        tag = str(secrets.randbits(96)).zfill(29)  # digits only: no case change or escape alters them
        return cls(f"(~{tag}~", f"~{tag}~)")

    def mark(self, text: str) -> str:
        return f"{self.open}{text}{self.close}" if text else text

    def strip(self, rendered: str) -> str:
        return rendered.replace(self.open, "").replace(self.close, "")

    def split(self, rendered: str) -> list[Segment] | None:
        """Split at the markers; None when they do not pair up (the template cut a marked string)."""
        head, *marked = rendered.split(self.open)
        if self.close in head:
            return None
        segments = [Segment(head, True)] if head else []
        for piece in marked:
            client_text, closed, rest = piece.partition(self.close)
            if not closed or self.close in rest:
                return None
            segments += [s for s in (Segment(client_text, False), Segment(rest, True)) if s.text]
        return segments


def mark_message(message: dict, mk: Markers) -> dict:
    """A parsed message (roles are checked, so they stay as they are) with the client's strings marked."""
    out = {**message, "content": mk.mark(message.get("content") or "")}
    if message.get("tool_calls"):
        out["tool_calls"] = [_mark_call(c, mk) for c in message["tool_calls"]]
    if isinstance(message.get("tool_call_id"), str):
        out["tool_call_id"] = mk.mark(message["tool_call_id"])
    return out


def _mark_call(call: dict, mk: Markers) -> dict:
    fn = call["function"]
    marked_id = mk.mark(call["id"]) if isinstance(call.get("id"), str) else call.get("id")
    return {**call, "id": marked_id,
            "function": {**fn, "name": mk.mark(fn["name"]), "arguments": mk.mark(fn["arguments"])}}


def mark_tools(tools: list[dict] | None, mk: Markers) -> list[dict] | None:
    """Parsed tools (type "function", name, description, parameters), the client's strings marked."""
    if tools is None:
        return None
    return [{**t, "function": {**t["function"], "name": mk.mark(t["function"]["name"]),
                               "description": mk.mark(t["function"]["description"]),
                               "parameters": mark_schema(t["function"]["parameters"], mk)}} for t in tools]


def mark_schema(value: Any, mk: Markers) -> Any:
    """Keys and strings alike, but for the JSON Schema words templates branch on."""
    if isinstance(value, str):
        return value if value in SCHEMA_WORDS else mk.mark(value)
    if isinstance(value, dict):
        return {mark_schema(k, mk): mark_schema(v, mk) for k, v in value.items()}
    if isinstance(value, list):
        return [mark_schema(v, mk) for v in value]
    return value


def mark_kwargs(kwargs: dict, mk: Markers) -> dict:
    """chat_template_kwargs: the names are template variables (identifiers, checked when parsed);
    everything in their values is the client's text, keys of nested objects included."""
    return {name: _mark_all(v, mk) for name, v in kwargs.items()}


def _mark_all(value: Any, mk: Markers) -> Any:
    if isinstance(value, str):
        return mk.mark(value)
    if isinstance(value, dict):
        return {mk.mark(k): _mark_all(v, mk) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_all(v, mk) for v in value]
    return value
