"""A long wait on the Responses route shows progress Codex counts (issue 21, item 3).

Codex reads the stream with an SSE parser that yields events, never comments, and
drops a stream after `stream_idle_timeout_ms` (300 s) without one, then sends the
request again and the prompt is prefilled again. Keep-alives are comments; past
`[gateway] progress_interval_s` of silence each becomes a `response.in_progress`
event instead. Here the translator is driven with a clock, and what it writes is
read back by the openai SDK's own stream accumulator.
"""

from __future__ import annotations

from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from cortex_gateway.responses.translate_stream import StreamTranslator
from neuron.shared.sse import KEEPALIVE
from tests.test_responses import USAGE, chunk, events, head

EVENTS = TypeAdapter(ResponseStreamEvent)
PROGRESS_S = 60.0
CHUNKS = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
          chunk({}, "stop"), chunk(usage=USAGE)]


def run(pauses: dict[int, int]) -> list[dict]:
    """The events of one stream with `pauses[i]` keep-alives, each after a progress interval, before chunk i."""
    translator, now, raw = StreamTranslator(head()), 0.0, b""
    translator.last_event = now
    for i, piece in enumerate([None, *CHUNKS]):  # index 0: the wait before the stream starts
        for _ in range(pauses.get(i, 0)):
            now += PROGRESS_S
            raw += translator.keepalive(PROGRESS_S, now=now).replace(KEEPALIVE, b"")
        if i == 0:
            raw += translator.start() if not translator.started else b""
        else:
            raw += translator.feed(piece)
        translator.last_event = now
    return events(raw + translator.finish())


def accumulated(got: list[dict]):
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in got:
        state.handle_event(EVENTS.validate_python(event))
    return state._completed_response


def test_short_waits_are_comments_and_change_nothing():
    translator = StreamTranslator(head())
    assert translator.keepalive(PROGRESS_S, now=translator.last_event + PROGRESS_S / 2) == KEEPALIVE
    assert [e["type"] for e in run({})] == [e["type"] for e in run({})]


def test_a_wait_before_the_stream_starts_it():
    got = run({0: 1})
    assert [e["type"] for e in got[:2]] == ["response.created", "response.in_progress"]
    assert [e["type"] for e in got].count("response.created") == 1


def test_long_waits_become_in_progress_events_and_the_answer_is_unchanged():
    plain, waited = run({}), run({0: 3, 2: 2, 4: 1})
    kinds = [e["type"] for e in waited]
    assert kinds.count("response.in_progress") == 1 + 2 + 2 + 1  # the start's own, then one per long wait
    assert [k for k in kinds if k != "response.in_progress"] == [e["type"] for e in plain
                                                                  if e["type"] != "response.in_progress"]
    assert [e["sequence_number"] for e in waited] == list(range(len(waited)))
    final, expected = accumulated(waited), accumulated(plain)
    assert final.output_text == expected.output_text == "Hello" and final.status == "completed"
