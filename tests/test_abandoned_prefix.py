"""A prompt whose client left during its prefill is not computed again from scratch (issue 21, item 3).

A client that gives up on a long prefill sends the same prompt again at once: Claude Code after its
stream watchdog fires (without streaming), a user after Esc, Codex after a reconnect. The node hears
at once that the first client left (the gateway's and its handlers are cancelled with their
connection), but the step that admitted the repeat came before the one that gave the leaver's slot
back, so the repeat took another slot and prefilled everything again. Now a step first lets leavers
go, and their slots keep what they computed; and a request whose prompt shares more with a sequence
still running than with any free slot copies that sequence's prefix (the repeat that beats the
news, or another agent with the same system prompt and tools). What was reused is reported as cached
(Anthropic `cache_read_input_tokens`). Both backends: llama.cpp (one unified KV cache, where a copy
shares cells) and torch (a cache per sequence, copied).
"""

from __future__ import annotations

import pytest

from tests.agent_stream import AgentStream
from tests.helpers import http_json, one_node_fleet

CHUNK = 64  # prompt tokens per prefill step on a CPU (neuron.engine.batching.prefill_chunk)


@pytest.fixture(scope="module", params=["tiny-gguf", "tiny-hf"])
def stack(request, tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("abandoned")
    (root / "neuron.toml").write_text("[neuron]\nkeepalive_s = 1.0\n")
    with one_node_fleet(root, models_dir, "--cpu-memory-mb", "4000", "--config", str(root / "neuron.toml"),
                        load=(request.param,)) as (gateway, neuron, _):
        yield gateway, neuron, request.param


def body(model: str, topic: str, stream: bool, question: str = "what next?") -> dict:
    words = " ".join(f"{topic}{i}" for i in range(150))  # some 1,100 tokens: 18 prefill steps
    return {"model": model, "max_tokens": 8, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"{topic}: {words}\n{question}"}]}


def start_slow(gateway, neuron, model: str, topic: str) -> AgentStream:
    """Stream the prompt, slowly prefilled, until the node has kept the stream alive once (it is prefilling)."""
    http_json("POST", neuron.url + "/debug/faults", {"model": model, "fault": "slow_prefill", "delay_ms": 150})
    first = AgentStream(gateway.url, "/v1/messages", body(model, topic, True))
    while (item := first.items.get(timeout=60)) and item[0] != "ping":
        assert isinstance(item, tuple) and item[0] == "message_start", item
    return first


def ask(gateway, model: str, topic: str, question: str = "what next?") -> dict:
    status, answer = http_json("POST", gateway.url + "/v1/messages", body(model, topic, False, question))
    assert status == 200, answer
    return answer


def test_a_prompt_sent_again_at_once_reuses_what_the_left_one_computed(stack):
    """The node hears at once that the client left (its handler is cancelled), but the prompt sent again
    was admitted to a slot before the leaver's was given back, and so computed it all again."""
    gateway, neuron, model = stack
    start_slow(gateway, neuron, model, "alpha").close()
    again = ask(gateway, model, "alpha")  # as Claude Code's fallback does, at once
    assert again["usage"]["cache_read_input_tokens"] >= CHUNK, again["usage"]


def test_a_prompt_sharing_a_prefix_with_one_still_prefilling_copies_what_that_one_computed(stack):
    """The same prompt before the node heard the first client leave, or another agent with the same
    system prompt and tools: it starts from the running sequence's cache, not from nothing."""
    gateway, neuron, model = stack
    first = start_slow(gateway, neuron, model, "gamma")
    try:
        second = ask(gateway, model, "gamma", "and then?")
        first.events(idle_limit=120)
    finally:
        first.close()
    assert second["usage"]["cache_read_input_tokens"] >= CHUNK, second["usage"]
    # What was copied is the prompt's own cache: a fresh model, computing it all, answers the same.
    assert http_json("POST", neuron.url + "/models/unload", {"model": model})[0] == 200
    assert http_json("POST", neuron.url + "/models/load", {"model": model})[0] == 200
    fresh = ask(gateway, model, "gamma", "and then?")
    assert fresh["usage"]["cache_read_input_tokens"] == 0
    assert second["content"] == fresh["content"]
