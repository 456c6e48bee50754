"""Parsing tool calls out of a model's text: streamed in any pieces, cut off by max_tokens, never leaked."""

from __future__ import annotations

import pytest

from neuron.engine.tool_calls import ToolCallParser, parse_all

NAMES = {"multiply", "get_weather"}
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"x": 4, "y": 1}}\n</tool_call>'


@pytest.mark.parametrize("text, calls, content", [
    (CALL, [("multiply", '{"x": 4, "y": 1}')], ""),
    ("Sure. " + CALL, [("multiply", '{"x": 4, "y": 1}')], "Sure. "),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [("get_weather", '{"city": "Paris"}')], ""),
    ('{"name": "other", "arguments": {}}', [], '{"name": "other", "arguments": {}}'),
    # Cut off by max_tokens: still a call (as OpenAI and Anthropic send one), never the markup as text.
    (CALL[:-5], [("multiply", '{"x": 4, "y": 1}')], ""),
    ('<tool_call>\n{"name": "multiply", "arguments": {"x": 4, "y"', [("multiply", '{"x": 4, "y"')], ""),
    ('<tool_call>\n{"name', [], ""),
    ('Hi <tool_call>\n{"name": "nope", "arguments": {', [], "Hi "),
    ("<tool_call>not json</tool_call> after", [], "<tool_call>not json</tool_call> after"),
])
def test_parse_all(text, calls, content):
    got_content, got_calls = parse_all(text, NAMES)
    assert [(c.name, c.arguments) for c in got_calls] == calls and got_content == content


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_streamed_in_any_pieces_the_same_as_whole(size):
    text = "Let me check. " + CALL + " done " + CALL.replace("4", "5")
    parser = ToolCallParser(NAMES)
    out, calls = "", []
    for i in range(0, len(text), size):
        piece, found = parser.feed(text[i:i + size])
        out, calls = out + piece, calls + found
    tail, more = parser.finish()
    assert out + tail == "Let me check.  done " and [c.arguments for c in calls + more] == [
        '{"x": 4, "y": 1}', '{"x": 5, "y": 1}']


def test_at_most_one_call_when_parallel_calls_are_off():
    content, calls = parse_all(CALL + CALL, NAMES, max_calls=1)
    assert len(calls) == 1 and content == ""
