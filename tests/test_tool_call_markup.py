"""A tool call ends where its JSON object ends, not at the first `</tool_call>` text.

A forced call's grammar lets a JSON string hold `</tool_call>` (a model writing HTML or a parser, say);
the parser cut the call there, found no valid JSON and returned the whole call as raw markup text.
"""

from __future__ import annotations

import json

import pytest

from neuron.engine.tool_calls import ToolCallParser, parse_all
from tests.neuron_inprocess import IN_MODULE_LOOP

NAMES = {"write"}
TRICKY = 'a</tool_call>b "quoted" {braces} \\ <tool_call>'
CALL = "<tool_call>\n" + json.dumps({"name": "write", "arguments": {"text": TRICKY}}) + "\n</tool_call>"
WRITE = {"type": "function", "function": {"name": "write", "description": "Write text to the file",
                                          "parameters": {"type": "object", "required": ["text"],
                                                         "properties": {"text": {"type": "string"}}}}}


def texts(calls) -> list[str]:
    return [json.loads(c.arguments)["text"] for c in calls]


@pytest.mark.parametrize("text, content, found", [
    (CALL, "", [TRICKY]),
    ("Writing. " + CALL + " Done.", "Writing.  Done.", [TRICKY]),
    (CALL + CALL.replace("a</", "c</"), "", [TRICKY, TRICKY.replace("a</", "c</")]),
    # No JSON object to follow: the first closing tag ends it, as before (text when it is no call).
    ("<tool_call>not json</tool_call> after", "<tool_call>not json</tool_call> after", []),
    ('<tool_call>{"name": "write", "arguments": {}} junk</tool_call> x',
     '<tool_call>{"name": "write", "arguments": {}} junk</tool_call> x', []),
])
def test_the_call_ends_at_its_json_object(text, content, found):
    got_content, calls = parse_all(text, NAMES)
    assert (got_content, texts(calls)) == (content, found)


def test_a_call_cut_inside_such_a_string_is_still_a_call():
    cut = CALL[:CALL.index("b \\\"quoted")]  # max_tokens fell right after the `</tool_call>` in the string
    content, [call] = parse_all(cut, NAMES)
    assert content == "" and call.name == "write" and "a</tool_call>" in call.arguments


def test_an_unclosed_string_falls_back_to_the_first_closing_tag_at_the_end():
    """A model's broken JSON (no constraint) still ends at a closing tag once the text is all there."""
    content, calls = parse_all('<tool_call>{"name": "write", "arguments": {"text": "x}</tool_call> after', NAMES)
    assert calls == [] and content == '<tool_call>{"name": "write", "arguments": {"text": "x}</tool_call> after'


@pytest.mark.parametrize("size", [1, 2, 5, 13, 1000])
def test_streamed_in_any_pieces_as_whole(size):
    text = "Writing. " + CALL + " Done."
    parser = ToolCallParser(NAMES)
    out, calls = "", []
    for i in range(0, len(text), size):
        piece, more = parser.feed(text[i:i + size])
        out, calls = out + piece, calls + more
        assert "<tool_call>" not in out
    tail, more = parser.finish()
    assert (out + tail, texts(calls + more)) == ("Writing.  Done.", [TRICKY])


# -- through the neuron's app (in process) ---------------------------------------------------------
@IN_MODULE_LOOP
@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_whose_argument_holds_the_closing_tag_comes_back_as_a_call(inprocess_neuron, model,
                                                                                        stream):
    client = inprocess_neuron.openai
    body = dict(model=model, messages=[{"role": "user", "content": "write it"}], tools=[WRITE],
                tool_choice="required", max_tokens=200, extra_body={"cortex_script": CALL})
    if not stream:
        message = (await client.chat.completions.create(**body)).choices[0].message
        assert not message.content and [c.function.name for c in message.tool_calls] == ["write"], message
        assert json.loads(message.tool_calls[0].function.arguments) == {"text": TRICKY}
        return
    content, arguments, finish = "", "", None
    async for chunk in await client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            delta, finish = choice.delta, choice.finish_reason or finish
            content += delta.content or ""
            arguments += "".join(c.function.arguments or "" for c in delta.tool_calls or [])
    assert content == "" and finish == "tool_calls" and json.loads(arguments) == {"text": TRICKY}


def deep_call(depth: int) -> str:
    return '<tool_call>{"name": "write", "arguments": {"text": ' + "[" * depth + "]" * depth + "}}</tool_call>"


# Deeper than a client may send back (64 levels), and deeper than json.loads can recurse.
DEEP_CALL = deep_call(70)


@pytest.mark.parametrize("depth", [70, 1200])
def test_a_call_nested_deeper_than_any_request_may_be_stays_text(depth):
    parser = ToolCallParser({"write"})
    text, calls = parser.feed(deep_call(depth))
    tail, more = parser.finish()
    assert calls + more == [] and "[[[" in text + tail


@IN_MODULE_LOOP
async def test_a_model_writing_such_a_call_gets_an_answer_not_a_500(inprocess_neuron):
    message = (await inprocess_neuron.openai.chat.completions.create(
        model="tiny-gguf", messages=[{"role": "user", "content": "write it"}], tools=[WRITE], max_tokens=1000,
        extra_body={"cortex_script": DEEP_CALL})).choices[0].message
    assert not message.tool_calls and "[[[" in message.content
