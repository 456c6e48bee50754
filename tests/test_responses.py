"""The OpenAI Responses API on the gateway, without processes: translation tables, the store, the
stream's event order. Served for real (the gateway's app over a fake neuron, and real processes driven
by the official `openai` SDK): `test_responses_served`."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsBase, ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from cortex_gateway.config import load_config
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.responses.fields import RESPONSES
from cortex_gateway.responses.input_items import normalize_input, to_messages
from cortex_gateway.responses.routes import ResponsesDialect
from cortex_gateway.responses.store import ResponseStore, StoredResponse
from cortex_gateway.responses.translate_request import to_chat
from cortex_gateway.responses.translate_response import ResponseHead, to_response
from cortex_gateway.responses.translate_stream import StreamTranslator
from neuron.shared.config import ConfigError
from neuron.shared.errors import ApiError

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": True}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
EVENTS = TypeAdapter(ResponseStreamEvent)


def chat(data: dict, history: list[dict] | None = None) -> dict:
    RESPONSES.check(data)
    return to_chat(data, history or []).body


def refused(data: dict) -> ApiError:
    with pytest.raises(ApiError) as err:
        chat(data)
    assert err.value.status == 400
    return err.value


# -- the field policy ---------------------------------------------------------------------
def test_every_sdk_field_has_a_rule():
    fields = set(ResponseCreateParamsBase.__annotations__) | set(ResponseCreateParamsStreaming.__annotations__)
    missing = fields - set(RESPONSES.rules)
    assert not missing, f"fields of the SDK's Responses request with no rule in responses/fields.py: {missing}"


def test_an_unknown_field_and_a_refused_one_are_named():
    assert refused({"model": "m", "input": "x", "tempurature": 1}).param == "tempurature"
    err = refused({"model": "m", "input": "x", "background": True})
    assert err.param == "background" and "background" in err.message
    assert chat({"model": "m", "input": "x", "background": False, "reasoning": {"effort": "low"}})


# -- requests -----------------------------------------------------------------------------
@pytest.mark.parametrize("request_, expected", [
    ({"input": "hi"}, {"messages": [{"role": "user", "content": "hi"}]}),
    ({"input": "hi", "instructions": "be brief", "max_output_tokens": 9, "temperature": 0.5, "top_p": 0.9},
     {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
      "max_tokens": 9, "temperature": 0.5, "top_p": 0.9}),
    ({"input": [{"role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                                  {"type": "input_text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "yes"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []}]},
     {"messages": [{"role": "developer", "content": "rules"}, {"role": "user", "content": "ab"},
                   {"role": "assistant", "content": "yes"}]}),
    # Text and calls of one answer are one assistant message again; outputs follow as tool messages.
    ({"input": [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Looking."},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a": 1}'},
                {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2",
                 "output": [{"type": "input_text", "text": "cold"}]}]},
     {"messages": [{"role": "user", "content": "weather?"},
                   {"role": "assistant", "content": "Looking.", "tool_calls": [
                       {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                   {"role": "tool", "tool_call_id": "call_2", "content": "cold"}]}),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
     {"messages": [{"role": "assistant", "content": None, "tool_calls": [
         {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
      "parallel_tool_calls": False},
     {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                                  "parameters": WEATHER["parameters"], "strict": True}}],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False}),
    ({"input": "x", "tools": [WEATHER, {**WEATHER, "name": "other"}],
      "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "other"}]}},
     {"tools": [{"type": "function", "function": {"name": "other", "description": "Current weather in a city",
                                                  "parameters": WEATHER["parameters"], "strict": True}}],
      "tool_choice": "required"}),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                                        "strict": True}}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                                 "strict": True}}}),
    ({"input": "x", "text": {"format": {"type": "json_object"}, "verbosity": "low"}},
     {"response_format": {"type": "json_object"}}),
    ({"input": "x", "text": {"format": {"type": "text"}}, "truncation": "disabled"}, {}),
    ({"input": "x", "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, {"logprobs": True, "top_logprobs": 0}),
    ({"input": "x", "stream": True, "cortex_script": "s"},
     {"stream": True, "stream_options": {"include_usage": True}, "cortex_script": "s"}),
])
def test_request_translation(request_, expected):
    body = chat({"model": "m", **request_})
    for key, value in expected.items():
        assert body[key] == value, key
    assert body["model"] == "m"
    assert set(body) <= {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
                         "temperature", "top_p", "stream", "stream_options", "response_format", "logprobs",
                         "top_logprobs", "cortex_script"}


@pytest.mark.parametrize("request_, named", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].file_id: images by file_id are not supported"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "'input_file'"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item references"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "'web_search_call'"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": 5}, "input"),
    ({}, "input: required"),
    ({"input": "x", "tools": [{"type": "local_shell"}]}, "'local_shell'"),  # hosted ones are dropped: test_codex
    ({"input": "x", "tools": [{"type": "custom", "name": "c"}]}, "'custom'"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "'file_search'"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "'nope'"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"input": "x", "include": ["everything"]}, "include[0]"),
    ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"input": "x", "top_logprobs": 21}, "top_logprobs"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "store": "yes"}, "store"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
])
def test_request_refusals_name_the_field(request_, named):
    err = refused({"model": "m", **request_})
    assert named in err.message, err.message


def test_history_comes_before_the_input_and_instructions_first():
    history = normalize_input("earlier")
    body = chat({"model": "m", "input": "now", "instructions": "rules"}, history)
    assert body["messages"] == [{"role": "system", "content": "rules"}, {"role": "user", "content": "earlier"},
                                {"role": "user", "content": "now"}]
    assert chat({"model": "m", "input": []}, history)["messages"] == [{"role": "user", "content": "earlier"}]


def test_input_items_get_ids_and_canonical_content():
    items = normalize_input([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "id": "msg_x"}])
    assert items[0]["id"].startswith("msg_") and items[0]["content"] == [{"type": "input_text", "text": "a"}]
    assert items[1]["id"] == "msg_x" and items[1]["content"][0]["type"] == "output_text"
    assert to_messages(items) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


# -- whole responses ----------------------------------------------------------------------
def head(**echo) -> ResponseHead:
    return ResponseHead(to_chat({"model": "m", "input": "x", **echo}, []).echo)


def completion(message: dict, finish: str = "stop", logprobs=None) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish,
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                      "prompt_tokens_details": {"cached_tokens": 5}}}


def test_a_text_answer_is_a_response_the_sdk_parses():
    obj = to_response(completion({"content": "hello"}), head(metadata={"k": "v"}, tools=[WEATHER]))
    resp = Response.model_validate(obj)  # strict: every required field is there
    assert resp.id.startswith("resp_") and resp.status == "completed" and resp.output_text == "hello"
    assert resp.output[0].id.startswith("msg_") and resp.output[0].content[0].annotations == []
    assert resp.metadata == {"k": "v"} and resp.tools[0].name == "get_weather" and resp.tool_choice == "auto"
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (12, 4, 16)
    assert resp.usage.input_tokens_details.cached_tokens == 5 and resp.usage.output_tokens_details.reasoning_tokens == 0


def test_tool_calls_become_function_call_items():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'}}]
    resp = Response.model_validate(to_response(completion({"content": None, "tool_calls": calls}, "tool_calls"),
                                               head(tools=[WEATHER])))
    assert [o.type for o in resp.output] == ["function_call", "function_call"]
    assert [o.call_id for o in resp.output] == ["call_1", "call_2"] and resp.output[0].id.startswith("fc_")
    assert json.loads(resp.output[1].arguments) == {"city": "Lima"} and resp.status == "completed"


def test_the_token_limit_leaves_the_response_incomplete():
    resp = Response.model_validate(to_response(completion({"content": "cut"}, "length"), head(max_output_tokens=2)))
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].status == "incomplete" and resp.max_output_tokens == 2


def test_logprobs_are_carried_onto_the_output_text():
    logprobs = {"content": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105],
                             "top_logprobs": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105]}]}]}
    resp = Response.model_validate(to_response(completion({"content": "hi"}, logprobs=logprobs), head(top_logprobs=1)))
    assert resp.output[0].content[0].logprobs[0].logprob == -0.5 and resp.top_logprobs == 1


# -- streams ------------------------------------------------------------------------------
def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"choices": choices, **({"usage": usage} if usage else {})}


def events(data: bytes) -> list[dict]:
    """The events of our SSE bytes, each validated against the SDK's event types."""
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            kind, payload = block.split("\n")
            event = json.loads(payload.removeprefix("data: "))
            assert kind == f"event: {event['type']}"
            EVENTS.validate_python(event)
            out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def translate(chunks: list[dict], **echo) -> tuple[list[dict], StreamTranslator]:
    translator = StreamTranslator(head(**echo))
    raw = translator.start() + b"".join(translator.feed(c) for c in chunks) + translator.finish()
    return events(raw), translator


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_stream_event_sequence_for_text():
    got, translator = translate([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                                 chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE)])
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert got[6]["text"] == "Hello" and got[-1]["response"]["output"][0]["content"][0]["text"] == "Hello"
    assert got[-1]["response"]["usage"]["input_tokens"] == 7 and translator.final == got[-1]["response"]
    assert len({e["item_id"] for e in got[3:8]}) == 1 == len({got[2]["item"]["id"], got[8]["item"]["id"]})


def test_stream_text_then_parallel_calls_are_separate_items():
    got, translator = translate([
        chunk({"content": "Let me look."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'}}]}),
        chunk({}, "tool_calls"), chunk(usage=USAGE)], tools=[WEATHER])
    final = translator.final
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][1]["arguments"] == '{"city":"Paris"}' and final["output"][2]["call_id"] == "call_b"
    done = [e for e in got if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["arguments"]) for e in done] == [(1, '{"city":"Paris"}'), (2, '{"city":"Lima"}')]
    added = [e["output_index"] for e in got if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2] and got[-1]["type"] == "response.completed"


def test_stream_cut_by_the_token_limit_ends_incomplete():
    got, _ = translate([chunk({"content": "cut"}), chunk({}, "length"), chunk(usage=USAGE)])
    assert got[-1]["type"] == "response.incomplete"
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_empty_stream_is_still_one_message():
    got, translator = translate([chunk({}, "stop")])
    assert translator.final["output"][0]["content"][0]["text"] == "" and got[-1]["type"] == "response.completed"


@pytest.mark.parametrize("started", [False, True])
def test_a_failed_stream_ends_with_error_and_response_failed(started):
    translator = StreamTranslator(head())
    raw = (translator.start() + translator.feed(chunk({"content": "par"}))) if started else b""
    raw += translator.fail(ApiError(502, "api_error", "the node died", code="upstream_failed"))
    got = events(raw)
    assert got[0]["type"] == "response.created"  # the SDK insists on it first, even for a failure
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert got[-2]["code"] == "upstream_failed" and got[-1]["response"]["error"]["code"] == "server_error"


def test_logprobs_of_a_split_character_wait_for_its_text():
    lp = [{"token": "\\xe2", "logprob": -1.0, "bytes": [226], "top_logprobs": []}]
    got, translator = translate([{"choices": [{"index": 0, "delta": {}, "logprobs": {"content": lp}}]},
                                 {"choices": [{"index": 0, "delta": {"content": "é"}, "logprobs": {"content": lp}}]},
                                 chunk({}, "stop")], top_logprobs=0)
    deltas = [e for e in got if e["type"] == "response.output_text.delta"]
    assert len(deltas[0]["logprobs"]) == 2 and len(translator.final["output"][0]["content"][0]["logprobs"]) == 2


class FakeUpstream:
    """What the relay reads of a neuron's stream: its bytes in the pieces given."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces
        self.content = self

    async def iter_any(self):
        for piece in self.pieces:
            yield piece

    def release(self) -> None:
        pass


class FakeClient:
    def __init__(self):
        self.written = b""

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_the_relay_passes_keepalives_on_and_stores_the_answer():
    store = ResponseStore(10, 60)
    data = {"model": "m", "input": "hi", "stream": True}
    dialect = ResponsesDialect(to_chat(data, []), store, owner=None, progress_after=60)
    usage = b'{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}'
    pieces = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n: keep-',
              b'alive\n\n', b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n: cortex-usage ' + usage
              + b'\n\ndata: {"choices":[],"usage":' + usage + b"}\n\ndata: [DONE]\n\n"]
    client, rec = FakeClient(), RequestRecord(model="m", endpoint="responses", started=0.0)
    await dialect.relay(FakeUpstream(pieces), client, rec)
    assert client.written.count(b": keep-alive\n\n") == 1 and b"cortex-usage" not in client.written
    got = events(client.written.replace(b": keep-alive\n\n", b""))
    assert got[-1]["type"] == "response.completed" and got[-1]["response"]["output"][0]["content"][0]["text"] == "Hi"
    assert (rec.prompt_tokens, rec.completion_tokens) == (7, 2) and rec.first_token_at is not None
    stored = store.get(got[-1]["response"]["id"])
    assert stored.response == got[-1]["response"]
    assert to_messages(stored.conversation) == [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "Hi"}]


# -- the store ----------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(name: str) -> StoredResponse:
    return StoredResponse({"id": name}, [], [])


def test_store_evicts_the_least_recently_used_beyond_its_size():
    store = ResponseStore(2, 100, Clock())
    store.put("a", entry("a"))
    store.put("b", entry("b"))
    assert store.get("a") is not None  # a is now the most recently used
    store.put("c", entry("c"))
    assert store.get("b") is None and store.get("a") and store.get("c") and len(store) == 2


def test_store_forgets_a_response_at_its_age_even_if_read():
    clock = Clock()
    store = ResponseStore(10, 60, clock)
    store.put("a", entry("a"))
    clock.now = 30
    store.put("b", entry("b"))
    assert store.get("a")
    clock.now = 60
    assert store.get("a") is None and store.get("b")
    clock.now = 90
    assert len(store) == 0


def test_store_delete_and_a_store_of_size_zero():
    store = ResponseStore(5, 60, Clock())
    store.put("a", entry("a"))
    assert store.delete("a") and not store.delete("a") and store.get("a") is None
    empty = ResponseStore(0, 60, Clock())
    empty.put("a", entry("a"))
    assert empty.get("a") is None


@pytest.mark.parametrize("line, named", [("responses_store_max = -1", "responses_store_max"),
                                         ("responses_store_ttl_s = 0", "responses_store_ttl_s"),
                                         ('responses_store_max = "many"', "responses_store_max")])
def test_store_limits_in_the_config_are_checked(tmp_path, line, named):
    path = tmp_path / "cortex.toml"
    path.write_text(f"[gateway]\n{line}\n")
    with pytest.raises(ConfigError, match=named):
        load_config(path)
    path.write_text("[gateway]\nresponses_store_max = 5\nresponses_store_ttl_s = 30\n")
    config = load_config(path)
    assert (config.responses_store_max, config.responses_store_ttl_s) == (5, 30.0)
