"""Every dialect's session hints and prefixes reach prefix-affine routing: pure tests, no sockets.

Affinity reads one request's keys from the translated call alone (`RequestKeys` over the chat body the
neurons get), so each dialect's translation must carry its hints into that body, in fields the neurons'
chat dialect accepts, and chain a conversation's turns so that turn 2 starts with turn 1's keys. The real
processes are in tests/test_prefix_affinity.py; the score itself in tests/test_affinity.py.
"""

from __future__ import annotations

import orjson
import pytest

from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.prefix_map import PrefixMap, RequestKeys, hint_key, model_seed
from cortex_gateway.responses.fields import RESPONSES
from cortex_gateway.responses.translate_request import to_chat
from cortex_gateway.responses.translate_response import message_item
from neuron.shared.openai_fields import CHAT
from tests.claude_code_request import claude_code_request
from tests.codex_request import SESSION, call_output, codex_request

MODEL = "m"
CHAT_PATH = "/v1/chat/completions"


def keys_of(body: dict, headers: dict | None = None) -> RequestKeys:
    """The keys dispatch reads from a translated call, as the neuron would be sent it."""
    CHAT.check(body)  # the neuron's own field policy: nothing it would refuse is carried
    return RequestKeys(MODEL, CHAT_PATH, orjson.dumps(body), headers or {})


def hint(kind: str, value: str) -> int:
    return hint_key(model_seed(MODEL), kind, value)


def responses(**data) -> dict:
    """A Responses request translated, as `POST /v1/responses` does it (field policy first)."""
    request = {"model": MODEL, "input": "hello", **data}
    RESPONSES.check(request)
    return to_chat(request, []).body


def anthropic(**data) -> dict:
    return to_openai({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}], **data})


# -- hints -------------------------------------------------------------------------


def test_chat_hints_are_read_as_sent():
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "user": "u",
            "prompt_cache_key": "k"}
    assert keys_of(body, {"X-Session-ID": "s"}).hints == [hint("session", "s"), hint("prompt_cache_key", "k"),
                                                          hint("user", "u")]


def test_responses_carries_user_and_prompt_cache_key():
    body = responses(user="u", prompt_cache_key="k")
    assert (body["user"], body["prompt_cache_key"]) == ("u", "k")
    assert keys_of(body).hints == [hint("prompt_cache_key", "k"), hint("user", "u")]


@pytest.mark.parametrize("data", [{}, {"user": ""}, {"prompt_cache_key": None}, {"user": 7}])
def test_responses_carries_no_hint_that_names_no_session(data):
    body = responses(**data)
    assert "user" not in body and "prompt_cache_key" not in body
    assert keys_of(body).hints == []


def test_responses_hints_follow_a_previous_response():
    """A follow-up names its session again (previous_response_id carries no hint over, as at OpenAI)."""
    first = to_chat({"model": MODEL, "input": "hi", "prompt_cache_key": "k"}, [])
    history = first.conversation + [message_item("hello there", "completed")]
    follow_up = to_chat({"model": MODEL, "input": "more", "previous_response_id": "resp_1",
                         "prompt_cache_key": "k"}, history).body
    assert keys_of(follow_up).hints == [hint("prompt_cache_key", "k")]


def test_a_session_header_counts_on_every_dialect():
    for body in (responses(), anthropic()):
        assert keys_of(body, {"X-Session-ID": "s"}).hints == [hint("session", "s")]


def test_anthropic_user_id_is_a_user_hint():
    body = anthropic(metadata={"user_id": "alice"})
    assert keys_of(body).hints == [hint("user", "alice")]
    assert anthropic(metadata={"user_id": ""}).get("user") in (None, "")
    assert keys_of(anthropic(metadata={"user_id": ""})).hints == []
    assert keys_of(anthropic(metadata={})).hints == []


def test_one_user_is_one_session_across_dialects():
    """`user` on chat or Responses and Anthropic's `user_id` name the same session, so its turns stick
    whichever dialect a client speaks."""
    pm = PrefixMap(100)
    pm.record(keys_of(anthropic(metadata={"user_id": "alice"})).hints, "n2")
    assert pm.hinted(keys_of(responses(user="alice", input="unrelated")).hints) == "n2"


def test_the_recorded_clients_send_hints_that_arrive():
    codex = codex_request(MODEL, "fix the test")
    RESPONSES.check(codex)
    assert keys_of(to_chat(codex, []).body).hints == [hint("prompt_cache_key", SESSION)]
    claude = to_openai(claude_code_request(MODEL, repeat_instructions=1))
    assert keys_of(claude).hints == [hint("user", "user_0f3a_account_5b1e_session_9c2d")]


# -- prefixes across turns ------------------------------------------------------------


def depth_of_turn_2(turn1: dict, turn2: dict) -> dict[str, int]:
    """Where turn 2's prefix points once turn 1 was served on n2, and how deep."""
    pm = PrefixMap(100)
    pm.record(keys_of(turn1).prefix, "n2")
    return pm.depths(keys_of(turn2).prefix)


def test_a_previous_response_id_turn_starts_with_turn_1s_prefix():
    first = to_chat({"model": MODEL, "instructions": "be brief", "input": "hi"}, [])
    stored = first.conversation + [message_item("hello there", "completed")]  # as the store keeps it
    second = to_chat({"model": MODEL, "instructions": "be brief", "input": "and then?",
                      "previous_response_id": "resp_1"}, stored)
    assert depth_of_turn_2(first.body, second.body) == {"n2": 2}, "the system message and the first input"


def test_a_growing_input_list_starts_with_turn_1s_prefix():
    first = to_chat({"model": MODEL, "input": [{"role": "user", "content": "hi"}]}, []).body
    output = message_item("hello there", "completed")  # the SDK's response.output, sent back as input
    second = to_chat({"model": MODEL, "input": [{"role": "user", "content": "hi"}, output,
                                                {"role": "user", "content": "and then?"}]}, []).body
    assert depth_of_turn_2(first, second) == {"n2": 1}
    string_first = to_chat({"model": MODEL, "input": "hi"}, []).body
    assert depth_of_turn_2(string_first, second) == {"n2": 1}, "a string input is the same user message"


def test_a_codex_turn_starts_with_the_turn_before():
    """Codex resends the whole conversation each turn, its calls and their outputs appended."""
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
            "arguments": '{"cmd": "pytest"}', "status": "completed"}
    turn1 = to_chat(codex_request(MODEL, "fix the test"), []).body
    turn2 = to_chat(codex_request(MODEL, "fix the test", [call, call_output("call_1", "1 failed")]), []).body
    assert depth_of_turn_2(turn1, turn2) == {"n2": len(turn1["messages"])}
