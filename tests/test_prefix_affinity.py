"""Prefix-affine routing with real processes: one tiny model loaded on two neurons through the gateway.

Which node served a request is read from the gateway's own counters (cortex_requests_total by node). With
both nodes idle the least busy rule sends everything to n1 (ties go by name), so a request that lands on
n2 with n2 no less busy than n1 got there by affinity, not by luck. A node is made busy by streams held
open on it directly (the neuron's slow fault, so they stay in flight until closed), and the tests wait for
the gateway's poll to see that load, not for time to pass. The pure score is tests/test_affinity.py, each
dialect's hints and prefixes tests/test_session_hints.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import openai
import pytest

from tests.helpers import NO_EOS, http_json, make_tiny, metric, start_gateway, start_neuron, wait_for

MODEL = "tiny"
HELD = 3  # streams held on a node to make it busy: over the margin of 1 the fleet runs with
SCHEDULING = "[scheduling]\naffinity_margin = 1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("affinity")
    make_tiny(root / "models" / f"{MODEL}.gguf", "gguf", "--seed", "1")
    with contextlib.ExitStack() as stack:
        neurons = {name: stack.enter_context(start_neuron(root, root / "models", "--cpu-memory-mb", "4000",
                                                          name=name)) for name in ("n1", "n2")}
        gateway = stack.enter_context(start_gateway(root, {n: p.url for n, p in neurons.items()},
                                                    extra_toml=SCHEDULING, args=("--log-level", "debug")))
        for name in neurons:
            status, body = http_json("POST", gateway.url + "/admin/load", {"node": name, "model": MODEL})
            assert status == 200, body
        wait_for(lambda: all(seen_load(gateway, n) == 0 for n in neurons), what="the model loaded on both nodes")
        yield gateway, neurons


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def served(gateway, node: str, endpoint: str = "chat") -> float:
    return metric(gateway, f'cortex_requests_total{{endpoint="{endpoint}",model="{MODEL}",node="{node}",'
                           'status="200"}')


def ask(gateway, messages: list[dict], **extra) -> tuple[str, str]:
    """(the node that served it, the answer's text), asked once the gateway sees both nodes as they are (idle,
    or held busy): a poll taken during the previous request would count it for a second or so."""
    node, answer = served_by(gateway, "chat", lambda c: c.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, **extra))
    return node, answer.choices[0].message.content or ""


def served_by(gateway, endpoint: str, send):
    """(the node that served it, the answer) of `send(client)`, sent once the gateway's poll is current."""
    wait_for(lambda: {seen_load(gateway, n) for n in ("n1", "n2")} <= {0, HELD}, what="the gateway's poll current")
    before = {n: served(gateway, n, endpoint) for n in ("n1", "n2")}
    answer = send(client(gateway.url))
    [node] = [n for n in before if served(gateway, n, endpoint) > before[n]]
    return node, answer


def seen_load(gateway, node: str) -> int | None:
    """The model's in flight and queued on `node` as the gateway last polled it (None: not loaded there)."""
    [status] = [n for n in http_json("GET", gateway.url + "/admin/status")[1]["nodes"] if n["name"] == node]
    return next((m["queued"] for m in status["models"] if m["id"] == MODEL and m["status"] == "loaded"), None)


@contextlib.contextmanager
def held_busy(gateway, neuron, node: str) -> Iterator[None]:
    """HELD slow streams open on the neuron itself (not through the gateway) until the block ends, and the
    gateway's poll seeing them before it starts; after it, the gateway seeing them gone."""
    status, body = http_json("POST", neuron.url + "/debug/faults",
                             {"model": MODEL, "fault": "slow", "delay_ms": 200, "count": HELD})
    assert status == 200, body
    streams = []
    try:
        for i in range(HELD):
            stream = client(neuron.url).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"hold {i}"}], max_tokens=2000, stream=True,
                logit_bias=NO_EOS)
            streams.append(stream)
            next(iter(stream))  # running there, not only sent
        wait_for(lambda: (seen_load(gateway, node) or 0) >= HELD, what=f"the gateway seeing {node} busy")
        yield
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: seen_load(gateway, node) == 0, what=f"the gateway seeing {node} idle again")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_second_turns_go_to_the_node_that_served_the_first(fleet):
    gateway, neurons = fleet
    conversations = {i: [user(f"conversation {i}: tell me about the number {i}")] for i in range(6)}
    first, answers = {}, {}
    with held_busy(gateway, neurons["n1"], "n1"):  # the first three start on n2, the least busy then
        for i in (0, 1, 2):
            first[i], answers[i] = ask(gateway, conversations[i])
    for i in (3, 4, 5):
        first[i], answers[i] = ask(gateway, conversations[i])
    assert first == {0: "n2", 1: "n2", 2: "n2", 3: "n1", 4: "n1", 5: "n1"}
    for i, messages in conversations.items():
        turn2 = messages + [{"role": "assistant", "content": answers[i]}, user("and then?")]
        node, _ = ask(gateway, turn2)
        assert node == first[i], f"conversation {i}'s second turn went to {node}, its first to {first[i]}"


def test_a_session_hint_sticks(fleet):
    gateway, neurons = fleet
    with held_busy(gateway, neurons["n1"], "n1"):
        assert ask(gateway, [user("alice's first question")], user="alice")[0] == "n2"
    assert ask(gateway, [user("a question from someone else")])[0] == "n1", "idle: least busy, by name"
    assert ask(gateway, [user("alice's unrelated second question")], user="alice")[0] == "n2"


def test_a_node_busier_than_the_margin_is_passed_over(fleet):
    gateway, neurons = fleet
    messages = [user("a conversation that starts on n1")]
    node, text = ask(gateway, messages)
    assert node == "n1"
    turn2 = messages + [{"role": "assistant", "content": text}, user("go on")]
    with held_busy(gateway, neurons["n1"], "n1"):
        assert ask(gateway, turn2)[0] == "n2", f"n1 busier by {HELD}, over the margin of 1"
    turn3 = turn2 + [{"role": "assistant", "content": "..."}, user("more")]
    assert ask(gateway, turn3)[0] == "n2", "turn 2 was served on n2, so its prefix is there now"


def respond(gateway, **request):
    """(the node that served it, the Response) of a Responses request."""
    return served_by(gateway, "responses", lambda c: c.responses.create(model=MODEL, max_output_tokens=4, **request))


def test_a_responses_conversation_stays_with_its_prompt_cache_key(fleet):
    """The Responses translation carries prompt_cache_key (and user) into the call affinity reads: a turn
    that shares no prefix with the last (a client that compacted its conversation, or changed its
    instructions) still goes where its session went, and a previous_response_id turn where its prefix is."""
    gateway, neurons = fleet
    with held_busy(gateway, neurons["n1"], "n1"):
        node, first = respond(gateway, input="a Responses conversation begins", prompt_cache_key="conv-r")
        assert node == "n2"
    assert respond(gateway, input="a Responses question from someone else")[0] == "n1", "idle: least busy"
    node, _ = respond(gateway, input="and then?", previous_response_id=first.id, prompt_cache_key="conv-r")
    assert node == "n2", "turn 2 after previous_response_id"
    node, _ = respond(gateway, input="a compacted summary of it all", instructions="be brief",
                      prompt_cache_key="conv-r")
    assert node == "n2", "a turn with no prefix in common, by its prompt_cache_key alone"
    assert "routing tiny to n2: session hint" in gateway.log()
    assert respond(gateway, input="a question in another session", prompt_cache_key="other")[0] == "n1", \
        "another key is another session"


def test_a_responses_user_sticks(fleet):
    gateway, neurons = fleet
    with held_busy(gateway, neurons["n1"], "n1"):
        assert respond(gateway, input="bob's first question", user="bob")[0] == "n2"
    assert respond(gateway, input="bob's unrelated second question", user="bob")[0] == "n2"
