"""A long wait before the answer keeps Claude Code's stream alive (issue 21, item 3).

Claude Code aborts a stream after 300 s without an event its SDK yields (`ping`s do not count: see
tests/agent_stream.py) and falls back to a non-streaming request that prefills again. On a CPU a
48k-token prompt takes minutes to prefill, and a cold load or a queue adds to it. The gateway now fills
a silence longer than `[gateway] progress_interval_s` with events of Anthropic's own vocabulary: the
message_start (when it was not sent yet), then an empty `thinking` block whose empty thinking_deltas
say "still working" (or an empty delta in the block already open). A client that never waits that long
gets the same events as before. The replay here runs Claude Code's rule with a 4 s limit against a
gateway with a 1 s interval, its model held back (a queue behind a held slot, a slow cold load) for
twice the limit.
"""

from __future__ import annotations

import orjson
import pytest

from cortex_gateway.anthropic.translate_stream import PING, StreamTranslator
from tests.agent_stream import AgentStream, final_message
from tests.claude_code_request import claude_code_request
from tests.helpers import NO_EOS, http_json, make_tiny, one_node_fleet

IDLE_LIMIT = 4.0  # Claude Code's is 300 s; the gateway's interval below is scaled with it
PROGRESS_S = 1.0
PATH = "/v1/messages?beta=true"
SCRIPT = ('The assertion expects 4 where add(1, 2) returns 3.\n<tool_call>\n{"name": "Bash", "arguments": '
          '{"command": "pytest tests/test_app.py", "description": "Run the failing test"}}\n</tool_call>')
MODELS = ('[[models]]\nid = "tiny-32k"\ncontext_size = 32768\n[[models]]\nid = "tiny-cold"\ncontext_size = 32768\n'
          '[aliases]\n"claude-sonnet-4-7" = "tiny-32k"\n"claude-opus-4-7" = "tiny-cold"\n')


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent-idle")
    models = root / "models"
    models.mkdir()
    make_tiny(models / "tiny-32k.gguf", "gguf", "--context", "32768")
    make_tiny(models / "tiny-cold.gguf", "gguf", "--context", "32768")
    (root / "neuron.toml").write_text("[neuron]\nkeepalive_s = 0.25\n")
    load = {"model": "tiny-32k", "context_size": 32768, "max_in_flight": 1, "max_queue_depth": 8, "max_wait_s": 600}
    with one_node_fleet(root, models, "--cpu-memory-mb", "4000", "--config", str(root / "neuron.toml"), load=(load,),
                        models_toml=MODELS, extra_toml=f"progress_interval_s = {PROGRESS_S}") as (gateway, neuron, _):
        yield gateway, neuron


def claude_code_body(model: str) -> dict:
    return {**claude_code_request(model), "cortex_script": SCRIPT}


def held_slot(neuron) -> AgentStream:
    """tiny-32k's only slot, taken by a slow generation until the test closes it."""
    http_json("POST", neuron.url + "/debug/faults", {"model": "tiny-32k", "fault": "slow", "delay_ms": 20})
    holder = AgentStream(neuron.url, "/v1/chat/completions", {
        "model": "tiny-32k", "stream": True, "max_tokens": 3000, "logit_bias": NO_EOS,
        "messages": [{"role": "user", "content": "go"}]})
    while True:  # generating: the slot is taken
        item = holder.items.get(timeout=60)
        assert isinstance(item, tuple), item
        if item[1] and item[1]["choices"] and item[1]["choices"][0]["delta"].get("content"):
            return holder


def release_after(seconds: float, release):
    done = []

    def tick(elapsed: float) -> None:
        if elapsed > seconds and not done:
            done.append(release())
    return tick


def assert_claude_code_answer(message) -> None:
    thinking, text, call = message.content
    assert thinking.type == "thinking" and thinking.thinking == "", thinking  # the progress shown meanwhile
    assert text.type == "text" and "add(1, 2) returns 3" in text.text
    assert call.type == "tool_use" and call.input["command"] == "pytest tests/test_app.py"
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 5000


def test_a_request_queued_behind_a_busy_slot_keeps_claude_code_waiting(stack):
    gateway, neuron = stack
    holder = held_slot(neuron)
    stream = AgentStream(gateway.url, PATH, claude_code_body("claude-sonnet-4-7"))
    try:
        events = stream.events(IDLE_LIMIT, on_tick=release_after(2 * IDLE_LIMIT, holder.close))
    finally:
        stream.close()
        holder.close()
    assert stream.status == 200
    assert events[0]["message"]["usage"]["input_tokens"] > 5000  # sent once the neuron counted the prompt
    assert_claude_code_answer(final_message(events))


def test_a_slow_cold_load_keeps_claude_code_waiting(stack):
    gateway, neuron = stack
    http_json("POST", neuron.url + "/debug/faults",
              {"model": "tiny-cold", "fault": "slow_load", "delay_ms": int(2500 * IDLE_LIMIT)})
    stream = AgentStream(gateway.url, PATH, claude_code_body("claude-opus-4-7"))
    try:
        events = stream.events(IDLE_LIMIT)
    finally:
        stream.close()
    assert stream.status == 200
    assert events[0]["type"] == "message_start"  # sent before the neuron had the prompt, so without its size
    assert_claude_code_answer(final_message(events))


# -- the translator's side, without a network ----------------------------------------------------------
def chunk(content: str | None = None, call: dict | None = None, finish: str | None = None) -> dict:
    delta = {"content": content} if content else {}
    if call:
        delta["tool_calls"] = [call]
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


CHUNKS = [chunk("Hello"), chunk(" there"), chunk(call={"index": 0, "id": "c1", "function": {"name": "Bash",
                                                                                            "arguments": '{"comm'}}),
          chunk(call={"index": 0, "function": {"arguments": 'and": "ls"}'}}), chunk(finish="tool_calls")]


def events_of(raw: bytes) -> list[dict]:
    return [orjson.loads(part.split(b"\ndata: ", 1)[1]) for part in raw.split(b"\n\n") if part]


def run(pauses: dict[int, int], gap: float = PROGRESS_S * 1.01) -> tuple[list[dict], int]:
    """CHUNKS through a translator; before chunk i, `pauses[i]` keep-alives `gap` seconds apart.
    The events (ids aside) and how many keep-alives were plain pings."""
    translator, now, out = StreamTranslator("m", [], now=0.0), 0.0, []
    for i, c in enumerate(CHUNKS):
        for _ in range(pauses.get(i, 0)):  # before chunk 0: a cold load, before the neuron's headers
            now += gap
            out.append(translator.keepalive(PROGRESS_S, now))
        if not translator.started:  # the neuron's headers: message_start with the prompt's size, as relay does
            out.append(translator.start(prompt_tokens=3, now=now))
        now += 0.01
        out.append(translator.feed(c, now))
    out.append(translator.finish())
    events = events_of(b"".join(b for b in out if b != PING))
    for e in events:
        (e.get("message") or {}).pop("id", None)
    return events, out.count(PING)


def test_pauses_shorter_than_the_interval_leave_the_events_as_before():
    events, pings = run({0: 3, 1: 3, 3: 3}, gap=PROGRESS_S / 4)
    assert pings == 9
    assert events == run({})[0]
    assert [b.type for b in final_message(events).content] == ["text", "tool_use"]


@pytest.mark.parametrize("pauses, empty_deltas", [({0: 4}, 2), ({1: 2}, 2), ({3: 2}, 2)])
def test_a_long_pause_shows_progress_and_keeps_the_answer(pauses, empty_deltas):
    events, pings = run(pauses)
    assert pings == 0
    message = final_message(events)
    kinds = [b.type for b in message.content]
    assert kinds == (["thinking", "text", "tool_use"] if 0 in pauses else ["text", "tool_use"])
    if 0 in pauses:  # before the neuron answered: message_start first, then an empty thinking block
        assert [e["type"] for e in events[:2]] == ["message_start", "content_block_start"]
        assert message.content[0].thinking == "" and message.content[0].signature == ""
    text = next(b for b in message.content if b.type == "text")
    assert text.text == "Hello there" and message.content[-1].input == {"command": "ls"}
    empty = [e for e in events if e["type"] == "content_block_delta"
             and not any(v for k, v in e["delta"].items() if k != "type")]
    assert len(empty) == empty_deltas
    assert [e["type"] for e in events].count("message_start") == 1
