"""Anthropic <-> OpenAI translation, table-driven, no server."""

from __future__ import annotations

import json

import pytest

from cortex_gateway.anthropic.errors import anthropic_type
from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.anthropic.translate_response import to_anthropic
from cortex_gateway.anthropic.translate_stream import StreamTranslator
from cortex_gateway.sse_reader import SSEReader
from neuron.shared.errors import ApiError

BASE = {"model": "m", "max_tokens": 10}


def req(**kw):
    return to_openai({**BASE, **kw})


@pytest.mark.parametrize("anthropic_req, expected", [
    ({"messages": [{"role": "user", "content": "hi"}], "system": "sys"},
     {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}),
    ({"messages": [{"role": "user", "content": "hi"}],
      "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
     {"messages": [{"role": "system", "content": "a\nb"}, {"role": "user", "content": "hi"}]}),
    # Claude Code's per-session billing block is not instructions: dropped, so prefix reuse survives sessions.
    ({"messages": [{"role": "user", "content": "hi"}],
      "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.1c6; cc_entrypoint=sdk-cli;"},
                 {"type": "text", "text": "You are Claude Code."}]},
     {"messages": [{"role": "system", "content": "You are Claude Code."}, {"role": "user", "content": "hi"}]}),
    # A system message inside the conversation (as Claude Code sends them) stays where it was sent.
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                   {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                   {"role": "user", "content": "go"}]},
     {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                   {"role": "system", "content": "be brief"}, {"role": "user", "content": "go"}]}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
     {"messages": [{"role": "user", "content": "ab"}]}),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}]}]},
     {"messages": [{"role": "assistant", "content": "Calling.", "tool_calls": [
         {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
         {"id": "toolu_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}]}),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
         "content": [{"type": "text", "text": "boom"}]},
        {"type": "text", "text": "thanks"}]}]},
     {"messages": [{"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
                   {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
                   {"role": "user", "content": "thanks"}]}),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [
        {"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}],
      "tool_choice": {"type": "any"}},
     {"tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
         "type": "object", "properties": {"a": {"type": "string"}}}}}], "tool_choice": "required"}),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "f",
                                                                       "disable_parallel_tool_use": True}},
     {"tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False}),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "auto"}}, {"tool_choice": "auto"}),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "none"}}, {"tool_choice": "none"}),
    ({"messages": [{"role": "user", "content": "x"}], "stop_sequences": ["END"], "temperature": 0.2,
      "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 9}},
     {"stop": ["END"], "temperature": 0.2, "top_p": 0.9, "top_k": 5, "user": "u1"}),
    ({"messages": [{"role": "user", "content": "x"}], "stream": True},
     {"stream": True, "stream_options": {"include_usage": True}}),
    ({"messages": [{"role": "user", "content": "x"}],
      "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"},
                                                                 "strict": True}}}),
    # What Claude Code sends to steer Anthropic's service is ignored by design (fields.MESSAGES), never refused.
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x",
                                                 "cache_control": {"type": "ephemeral"}}]}],
      "context_management": {"edits": []}, "cache_control": {"type": "ephemeral"}, "betas": ["x"],
      "thinking": {"type": "adaptive"}, "speed": "fast"},
     {"messages": [{"role": "user", "content": "x"}]}),
])
def test_request_translation(anthropic_req, expected):
    got = req(**anthropic_req)
    for key, value in expected.items():
        assert got[key] == value, key
    assert "thinking" not in got and got["max_tokens"] == 10


@pytest.mark.parametrize("bad, where", [
    ({"messages": []}, "messages"),
    # Anthropic's own paths and wording: clients key their fallbacks on them.
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role: Input should be"),
    ({"messages": [{"role": "system", "content": 3}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages.0.content.0: document blocks"),
    # An image the gateway cannot read is refused naming the block the client sent, not an internal one.
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image", "source": {
        "type": "file", "file_id": "f"}}]}]}, "messages.0.content.1.source: file sources are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages.0.content.0: Input tag 'video' found using 'type' does not match any of the expected tags"),
    ({"messages": [{"role": "user", "content": "x"}], "mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
    ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}]}]},
     "messages.0.content.0: server_tool_use blocks come from tools that run on Anthropic's service"),
    ({"messages": [{"role": "user", "content": "x"}], "frobnicate": 1},
     "Unrecognized request argument supplied: frobnicate"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "s"}]},
     "server tool"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
])
def test_request_translation_refuses_clearly(bad, where):
    with pytest.raises(ApiError) as err:
        req(**bad)
    assert err.value.status == 400 and where in err.value.message


def test_missing_max_tokens_is_required():
    with pytest.raises(ApiError, match="max_tokens: Field required"):
        to_openai({"model": "m", "messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize("choice, stops, expected", [
    ({"message": {"content": "hi"}, "finish_reason": "stop"}, [],
     ([{"type": "text", "text": "hi"}], "end_turn", None)),
    ({"message": {"content": "hi"}, "finish_reason": "length"}, [],
     ([{"type": "text", "text": "hi"}], "max_tokens", None)),
    ({"message": {"content": "hi"}, "finish_reason": "stop", "stop_reason": "END"}, ["END"],
     ([{"type": "text", "text": "hi"}], "stop_sequence", "END")),
    ({"message": {"content": None, "tool_calls": [
        {"id": "call_1", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "function": {"name": "g", "arguments": "not json"}}]}, "finish_reason": "tool_calls"}, [],
     ([{"type": "tool_use", "id": "toolu_call_1", "name": "f", "input": {"a": 1}},
       {"type": "tool_use", "id": "toolu_call_2", "name": "g", "input": {"_raw_arguments": "not json"}}],
      "tool_use", None)),
])
def test_response_translation(choice, stops, expected):
    out = to_anthropic({"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}, "m", stops)
    assert (out["content"], out["stop_reason"], out["stop_sequence"]) == expected
    assert out["usage"] == {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0} and out["id"].startswith("msg_")


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        lines = block.split("\n")
        out.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return out


def run_stream(chunks: list[dict], stops=()) -> list[tuple[str, dict]]:
    t = StreamTranslator("m", list(stops))
    raw = t.start() + b"".join(t.feed(c) for c in chunks) + t.finish()
    return events(raw)


def delta(**d):
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def tc(index, id=None, name=None, args=None):
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    return {"index": index, **({"id": id} if id else {}), "function": fn}


def assemble(evts) -> list[dict]:
    """What the SDK builds from the events (content blocks with text / parsed input)."""
    blocks: dict[int, dict] = {}
    for name, data in evts:
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"], _json="")
        elif name == "content_block_delta":
            d = data["delta"]
            b = blocks[data["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            else:
                b["_json"] += d["partial_json"]
    out = []
    for i in sorted(blocks):
        b = blocks[i]
        raw = b.pop("_json")
        if b["type"] == "tool_use":
            b["input"] = json.loads(raw or "{}")
        out.append(b)
    return out


def test_stream_event_sequence_for_text():
    evts = run_stream([delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"),
                       {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                       {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}])
    assert [e for e, _ in evts] == ["message_start", "content_block_start", "content_block_delta",
                                    "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert evts[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert evts[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 0,
                                    "cache_creation_input_tokens": 0}
    assert assemble(evts) == [{"type": "text", "text": "Hello"}]


def test_chunk_with_text_and_tool_call_keeps_both():
    chunk = {"choices": [{"index": 0, "delta": {"content": "Checking.", "tool_calls": [
        tc(0, "call_a", "get_weather", '{"city": "Paris"}')]}, "finish_reason": None}]}
    evts = run_stream([chunk, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}])
    assert assemble(evts) == [{"type": "text", "text": "Checking."},
                              {"type": "tool_use", "id": "toolu_call_a", "name": "get_weather",
                               "input": {"city": "Paris"}}]
    assert evts[-2][1]["delta"]["stop_reason"] == "tool_use"
    starts = [d["index"] for e, d in evts if e == "content_block_start"]
    stops = [d["index"] for e, d in evts if e == "content_block_stop"]
    assert starts == stops == [0, 1], "each block closes before the next opens"


def test_parallel_tool_calls_with_arguments_in_many_pieces():
    args0, args1 = '{"city": "Paris", "days": 3}', '{"city": "Tokyo"}'
    chunks = [delta(tool_calls=[tc(0, "c0", "f", "")])]
    chunks += [delta(tool_calls=[tc(0, args=args0[i:i + 3])]) for i in range(0, len(args0), 3)]
    chunks += [delta(tool_calls=[tc(1, "c1", "g", args1[:5])]), delta(tool_calls=[tc(1, args=args1[5:])])]
    chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    evts = run_stream(chunks)
    assert assemble(evts) == [
        {"type": "tool_use", "id": "toolu_c0", "name": "f", "input": {"city": "Paris", "days": 3}},
        {"type": "tool_use", "id": "toolu_c1", "name": "g", "input": {"city": "Tokyo"}}]
    assert sum(1 for e, d in evts if e == "content_block_delta" and d["index"] == 0) == len(range(0, len(args0), 3))


def test_two_tool_calls_in_one_chunk():
    evts = run_stream([delta(tool_calls=[tc(0, "a", "f", "{}"), tc(1, "b", "g", '{"x": 1}')])])
    assert [(b["name"], b["input"]) for b in assemble(evts)] == [("f", {}), ("g", {"x": 1})]


def test_stream_stop_sequence():
    evts = run_stream([delta(content="one two "), {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                                                 "stop_reason": "three"}]}], stops=["three"])
    assert evts[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "three"}


def test_empty_stream_is_still_a_whole_message():
    evts = run_stream([{"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}])
    assert [e for e, _ in evts] == ["message_start", "message_delta", "message_stop"]
    assert evts[1][1]["delta"]["stop_reason"] == "max_tokens"


def test_sse_reader_handles_events_split_across_chunks():
    reader = SSEReader()
    assert reader.feed(b'data: {"a"') == []
    assert reader.feed(b': 1}\n\n: keep-alive\n\ndata: [DO') == [b'{"a": 1}', b": keep-alive"]
    assert reader.feed(b"NE]\n\n") == [b"[DONE]"]


@pytest.mark.parametrize("status, our_type, expected", [
    (400, "invalid_request_error", "invalid_request_error"), (401, "authentication_error", "authentication_error"),
    (404, "not_found_error", "not_found_error"), (429, "rate_limit_error", "rate_limit_error"),
    (503, "overloaded_error", "overloaded_error"), (500, "server_error", "api_error"),
    (502, "api_error", "api_error"), (507, "insufficient_memory", "api_error"), (413, "invalid_request_error",
                                                                               "request_too_large"),
])
def test_error_types_map_by_status(status, our_type, expected):
    assert anthropic_type(ApiError(status, our_type, "m")) == expected


def test_cached_prompt_tokens_are_anthropic_cache_reads():
    from cortex_gateway.anthropic.translate_response import anthropic_usage

    usage = {"prompt_tokens": 120, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 100}}
    assert anthropic_usage(usage) == {"input_tokens": 20, "output_tokens": 4, "cache_read_input_tokens": 100,
                                      "cache_creation_input_tokens": 0}
