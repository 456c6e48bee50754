"""Codex CLI's requests (`tests/codex_request.py`) replayed through the gateway: its shell-tool loop, as it runs.

Codex sends `client_metadata`, a `namespace` tool and a hosted `web_search` tool
by default, with no switch to stop them. `client_metadata` is ignored (metadata);
the namespace's functions are offered to the model under flat names and their
calls come back as OpenAI returns them, with `namespace`, which is how Codex finds
the tool to run; `web_search` is left out of what the model is offered, and the
answer says so ([gateway] hosted_tools = "refuse" makes it a 400 instead).
Codex itself is not needed: the recorded requests stand in for it, read with
raw HTTP as Codex reads them (SSE events, `response.completed` last).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cortex_gateway.config import load_config
from cortex_gateway.responses.bounds import check_lengths
from cortex_gateway.responses.fields import RESPONSES
from cortex_gateway.responses.input_items import normalize_input, to_messages
from cortex_gateway.responses.translate_request import to_chat
from cortex_gateway.responses.translate_response import ResponseHead, to_response
from cortex_gateway.responses.translate_stream import StreamTranslator
from neuron.shared.config import ConfigError
from neuron.shared.errors import ApiError
from tests.codex_request import HEADERS, TOOLS, call_output, codex_request, function_call
from tests.helpers import make_tiny, one_node_fleet

EVENTS = TypeAdapter(ResponseStreamEvent)
AGENT_TOOLS = ["close_agent", "resume_agent", "send_input", "spawn_agent", "wait_agent"]


def translate(body: dict, hosted_tools: str = "drop"):
    RESPONSES.check(body)
    check_lengths(body)
    return to_chat(body, [], hosted_tools)


# -- the request, translated --------------------------------------------------------------
def test_codex_defaults_are_accepted_and_flattened():
    translated = translate(codex_request("m", "list the files"))
    offered = [t["function"]["name"] for t in translated.body["tools"]]
    assert offered == ["exec_command", "write_stdin", "request_user_input", "view_image",
                       *(f"multi_agent_v1__{name}" for name in AGENT_TOOLS), "get_goal", "create_goal", "update_goal"]
    spawn = translated.body["tools"][7]["function"]
    assert spawn["description"].startswith("Tools for spawning and managing sub-agents.")
    assert translated.dropped == ["web_search"] and translated.echo["cortex_dropped_tools"] == ["web_search"]
    assert "client_metadata" not in json.dumps(translated.body) and "x-codex" not in json.dumps(translated.echo)
    assert [m["role"] for m in translated.body["messages"]] == ["developer", "developer", "user", "user"]
    # The echo is what the model was offered, grouped as sent; the SDK parses it.
    response = Response.model_validate(ResponseHead(translated.echo).response("completed", []))
    assert [t.type for t in response.tools] == ["function"] * 4 + ["namespace"] + ["function"] * 3
    assert [t.name for t in response.tools[4].tools] == AGENT_TOOLS


def test_hosted_tools_are_refused_when_the_gateway_says_so():
    with pytest.raises(ApiError) as err:
        translate(codex_request("m", "x"), hosted_tools="refuse")
    assert err.value.status == 400 and err.value.param == "tools" and err.value.code == "unsupported_tool"
    assert "tools[8]: 'web_search' is a hosted tool" in err.value.message and "hosted_tools" in err.value.message


@pytest.mark.parametrize("tools, choice, named", [
    ([{"type": "web_search"}], "required", "no function tool to call (the hosted tools web_search"),
    ([{"type": "file_search", "vector_store_ids": ["vs_1"]}], {"type": "file_search"}, "'file_search'"),
    ([{"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"}], None,
     "'computer_use_preview' is not available"),  # run by the client, with call items of its own: refused
    ([{"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "custom", "name": "c"}]}], None,
     "tools[0].tools[0]: tool type 'custom'"),
    ([{"type": "namespace", "name": "a", "description": "", "tools": [{"type": "function", "name": "b"}]},
      {"type": "function", "name": "a__b"}], None, "two tools are named 'a__b'"),
])
def test_what_cannot_be_offered_is_named(tools, choice, named):
    body = {"model": "m", "input": "x", "tools": tools, **({"tool_choice": choice} if choice else {})}
    with pytest.raises(ApiError) as err:
        translate(body)
    assert named in err.value.message, err.value.message


def test_tool_choice_names_a_namespaced_function_by_its_own_name():
    body = codex_request("m", "x")
    forced = translate({**body, "tool_choice": {"type": "function", "name": "wait_agent"}}).body
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "multi_agent_v1__wait_agent"}}
    allowed = translate({**body, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "function", "name": "exec_command"}, {"type": "web_search"}]}}).body
    assert [t["function"]["name"] for t in allowed["tools"]] == ["exec_command"]


def test_the_hosted_tools_setting_is_checked(tmp_path):
    path = tmp_path / "cortex.toml"
    path.write_text('[gateway]\nhosted_tools = "refuse"\n')
    assert load_config(path).hosted_tools == "refuse"
    path.write_text('[gateway]\nhosted_tools = "ignore"\n')
    with pytest.raises(ConfigError, match=r'hosted_tools: expected "drop" or "refuse"'):
        load_config(path)


# -- the answer: a namespaced call comes back as Codex matches it ---------------------------
def _namespaced_head() -> ResponseHead:
    translated = translate(codex_request("m", "x"))
    return ResponseHead(translated.echo, translated.namespaced)


def test_a_namespaced_call_has_its_own_name_and_namespace():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "multi_agent_v1__wait_agent",
                                                                "arguments": '{"targets": ["a"]}'}},
             {"id": "call_2", "type": "function", "function": {"name": "exec_command", "arguments": '{"cmd": "ls"}'}}]
    chat = {"choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "tool_calls": calls}}]}
    whole = Response.model_validate(to_response(chat, _namespaced_head()))
    assert [(o.name, o.namespace) for o in whole.output] == [("wait_agent", "multi_agent_v1"), ("exec_command", None)]
    translator = StreamTranslator(_namespaced_head())
    raw = translator.start() + translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, **calls[0]}]}, "finish_reason": "tool_calls"}]}) + translator.finish()
    events = [EVENTS.validate_json(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if block]
    added = next(e for e in events if e.type == "response.output_item.added")
    assert (added.item.name, added.item.namespace) == ("wait_agent", "multi_agent_v1")
    assert (events[-1].response.output[0].name, events[-1].response.output[0].namespace) == \
        ("wait_agent", "multi_agent_v1")


def test_a_resent_namespaced_call_reads_as_the_model_made_it():
    resent = function_call({"type": "function_call", "status": "completed", "id": "fc_1", "name": "close_agent",
                            "namespace": "multi_agent_v1", "arguments": "{}", "call_id": "call_1"})
    items = normalize_input([resent, call_output("call_1", "closed")])
    assert items[0]["namespace"] == "multi_agent_v1"  # kept, as the store and input_items show it
    assert to_messages(items)[0]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__close_agent"


# -- Codex's loop, replayed through real processes --------------------------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("codex")
    models = root / "models"
    models.mkdir()
    make_tiny(models / "tiny-32k.gguf", "gguf", "--context", "32768")
    with one_node_fleet(root, models, "--cpu-memory-mb", "4000",
                        models_toml='[[models]]\nid = "tiny-32k"\ncontext_size = 32768\n') as (gateway, _, _):
        yield gateway


def turn(gateway, body: dict, script: str) -> tuple[dict, list[dict]]:
    """One Codex turn over raw HTTP: the response headers and its SSE events, in order."""
    data = json.dumps({**body, "cortex_script": script}).encode()
    req = urllib.request.Request(gateway.url + "/v1/responses", data=data, headers=HEADERS, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            headers, raw = dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{err.code}: {err.read()[:500]!r}") from None
    events = []
    for block in raw.decode().split("\n\n"):
        data_lines = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data_lines:
            events.append(json.loads(data_lines[0]))
            EVENTS.validate_python(events[-1])
    return headers, events


def _call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_codex_shell_loop_with_its_defaults(gateway):
    prompt = "Run the shell command 'ls' and tell me what files are here."
    headers, events = turn(gateway, codex_request("tiny-32k", prompt), _call("exec_command", {"cmd": "ls"}))
    assert headers["X-Cortex-Dropped-Tools"] == "web_search"
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    done = events[-1]["response"]
    assert done["cortex_dropped_tools"] == ["web_search"] and done["store"] is False
    (shell,) = done["output"]
    assert shell["type"] == "function_call" and shell["name"] == "exec_command" and "namespace" not in shell
    assert json.loads(shell["arguments"]) == {"cmd": "ls"}

    history = [function_call(shell), call_output(shell["call_id"], "Process exited with code 0\nOutput:\nnotes.txt\n")]
    _, events = turn(gateway, codex_request("tiny-32k", prompt, history),
                     _call("multi_agent_v1__close_agent", {"target": "worker-1"}))
    (agent,) = events[-1]["response"]["output"]
    assert (agent["name"], agent["namespace"]) == ("close_agent", "multi_agent_v1")
    added = next(e["item"] for e in events if e["type"] == "response.output_item.added")
    assert (added["name"], added["namespace"]) == ("close_agent", "multi_agent_v1")

    history += [function_call(agent), call_output(agent["call_id"], "closed")]
    answer = "The directory holds notes.txt."
    _, events = turn(gateway, codex_request("tiny-32k", prompt, history), answer)
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == answer
    assert final["usage"]["input_tokens"] > 5000  # the whole conversation, Codex's long prompt included


def test_a_whole_answer_names_the_dropped_tools_too(gateway):
    body = {**codex_request("tiny-32k", "hi"), "stream": False, "cortex_script": "Hello."}
    req = urllib.request.Request(gateway.url + "/v1/responses", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.headers["X-Cortex-Dropped-Tools"] == "web_search"
        answer = Response.model_validate_json(resp.read())
    assert answer.output_text == "Hello." and answer.model_extra["cortex_dropped_tools"] == ["web_search"]
    plain = {"model": "tiny-32k", "input": "hi", "tools": TOOLS[:1], "cortex_script": "Hi."}
    req = urllib.request.Request(gateway.url + "/v1/responses", data=json.dumps(plain).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert "X-Cortex-Dropped-Tools" not in resp.headers and b"cortex_dropped_tools" not in resp.read()
