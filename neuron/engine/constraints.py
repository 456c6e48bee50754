"""Constrained decoding: the output is made to match a JSON schema or a tool call, token by token.

At every step the request's grammar says which tokens may come next; the others
get a logit of -inf before sampling, so even a random-weight model can only
write JSON that parses and validates. Both backends use llguidance for this:
measured on SmolLM2's 49k-token vocabulary (benchmarks/constrained.py), its
mask costs about 0.6 ms a token where llama.cpp's own GBNF grammar sampler
costs 5.5-6.3 ms, and it enforces what the GBNF converter shipped with
llama-cpp-python does not (number and integer bounds). A schema keyword it
cannot enforce is refused with a 400 that names it, never passed silently.

What a request constrains:
- `response_format` json_object / json_schema: the answer is that JSON;
- `tool_choice` required or a named function: the answer is one
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` of an allowed tool,
  its arguments valid against the tool's schema (the form `tool_calls` parses);
- both a format and tools left to the model (`auto`): either of the two.

A weak model may never stop on its own: invent keys forever, or digits. So
an object schema with `properties` and no `additionalProperties` is closed (no
other keys), as OpenAI's strict mode and llama.cpp's grammar converter treat
it; integers and numbers without bounds stay within ±(2^53 - 1), and numbers
get at most 9 decimal places unless the schema sets `multipleOf`. A schema that
wants other keys says `additionalProperties: true`. Strings and arrays are
bounded only by their own maxLength / maxItems, and by max_tokens.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from neuron.engine.schema_refs import embed_schemas
from neuron.engine.tool_calls import CLOSE as TOOL_CLOSE
from neuron.engine.tool_calls import OPEN as TOOL_OPEN
from neuron.server.openai_schema import InferenceRequest
from neuron.shared.errors import ApiError

# Compact JSON: one space after ':' and ',' and none elsewhere, so a weak model cannot wander in whitespace.
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: what clients parse without loss
NUMBER_STEP = 1e-9  # at most 9 decimal places (llguidance takes steps down to 1e-10)


def grammar_for(req: InferenceRequest) -> str | None:
    """The llguidance grammar the request's output must match; None when the output is free."""
    tools, choice, fmt = req.tools or [], req.tool_choice, req.output_format
    if choice.forced:
        allowed = [t for t in tools if choice.name in (None, t["function"]["name"])]
        return _lark(f"start: {_tool_call_rule(allowed)}")
    if fmt is None:
        return None
    answer = f"%json {_styled(fmt.schema)}"
    if tools and choice.mode == "auto":
        return _lark(f"start: {answer} | {_tool_call_rule(tools)}")
    return _lark(f"start: {answer}")


def _tool_call_rule(tools: list[dict]) -> str:
    """One `<tool_call>` of any of `tools`; each tool's own `$defs` and `$ref`s hoisted to the call's root."""
    arguments, defs = embed_schemas([t["function"]["parameters"] for t in tools], prefix="tool")
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": t["function"]["name"]}, "arguments": args}}
             for t, args in zip(tools, arguments, strict=True)]
    schema = {"anyOf": calls, **({"$defs": defs} if defs else {})}
    return f"{json.dumps(TOOL_OPEN + chr(10))} %json {_styled(schema)} {json.dumps(chr(10) + TOOL_CLOSE)}"


def _styled(schema: dict) -> str:
    out = bounded(copy.deepcopy(schema))
    out["x-guidance"] = {**_JSON_STYLE, **(schema.get("x-guidance") or {})}
    return json.dumps(out)


def bounded(schema):
    """In place, and returned: the schema with the limits a weak model needs to finish (see the module doc).

    Objects that list properties and say nothing of others are closed; integers and numbers without
    bounds stay within JavaScript's safe integer range, and numbers without `multipleOf` get at most
    9 decimal places. Each of these only narrows the schema: what it allows still validates."""
    if isinstance(schema, dict):
        if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema \
                and "patternProperties" not in schema:
            schema["additionalProperties"] = False
        kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
        if "integer" in kinds or "number" in kinds:
            if "maximum" not in schema and "exclusiveMaximum" not in schema:
                schema["maximum"] = SAFE_INTEGER
            if "minimum" not in schema and "exclusiveMinimum" not in schema:
                schema["minimum"] = -SAFE_INTEGER
        if "number" in kinds and "multipleOf" not in schema:
            schema["multipleOf"] = NUMBER_STEP
        for value in schema.values():
            bounded(value)
    elif isinstance(schema, list):
        for value in schema:
            bounded(value)
    return schema


def _lark(text: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(text)


def check_grammar(grammar: str, req: InferenceRequest) -> None:
    """A 400 naming what the schema asks that cannot be enforced (e.g. `Unimplemented keys: ["not"]`)."""
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        param = "tool_choice" if req.tool_choice.forced else "response_format"
        raise ApiError(400, "invalid_request_error", f"{param}: the JSON schema uses something constrained decoding "
                       f"cannot enforce here: {messages[0] if messages else 'invalid schema'}. Remove or rewrite "
                       "that part of the schema.", code="unsupported_schema", param=param)


class TokenConstraint:
    """One generation's grammar state: which tokens may come next, and the tokens taken."""

    def __init__(self, matcher, n_vocab: int):
        self.matcher = matcher
        self.n_vocab = n_vocab
        self._words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """A bool per vocabulary entry: may it come next?"""
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return np.unpackbits(self._words.view(np.uint8), bitorder="little")[:self.n_vocab].astype(bool)

    def mask(self, logits: np.ndarray) -> None:
        """In place: every token the grammar forbids gets -inf."""
        allowed = self.allowed()
        logits[:len(allowed)][~allowed] = -np.inf

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)


def new_constraint(backend, grammar: str) -> TokenConstraint:
    """A matcher for one generation, on the tokenizer thread (compiling is the costly part)."""
    import llguidance

    matcher = llguidance.LLMatcher(backend.guidance_tokenizer(), grammar, log_level=0)
    if matcher.is_error():
        raise ApiError(400, "invalid_request_error", f"the output constraint could not be compiled: "
                       f"{matcher.get_error()}", code="unsupported_schema")
    return TokenConstraint(matcher, backend.n_vocab)
