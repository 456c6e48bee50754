"""OpenAI chat completion chunks -> the Anthropic streaming event sequence.

message_start, then for each content block content_block_start, its deltas
(text_delta or input_json_delta) and content_block_stop, then message_delta
(stop_reason, usage) and message_stop. Blocks never interleave: a chunk that
carries text and a tool call closes the text block before opening the tool's;
parallel tool calls become consecutive tool_use blocks; arguments that arrive
in many pieces stream as many input_json_delta events of one block.

A long wait (a cold load, a queue, a long prefill) is filled at each keep-alive
with a `ping`, which keeps the connection open but not every client: the SDKs
drop pings, and Claude Code aborts a stream after 300 s without an event they
yield, then asks again without streaming and the prompt is prefilled twice.
Past `progress_after` seconds without an event a keep-alive is therefore an
event of the message itself: message_start if it was not sent, else an empty
delta in the open block, or, before any block, the start of an empty
`thinking` block (a block of Anthropic's vocabulary that clients accumulate
and skip when they show the answer; an empty text block would be sent back in
the next turn, and a repeated message_delta is counted again by Claude Code's
cost tally). A stream that never waits that long is as it always was. The
rule itself is `cortex_gateway.translator.ProgressClock`, shared with Responses.
"""

from __future__ import annotations

import orjson

from cortex_gateway.anthropic.errors import error_event
from cortex_gateway.anthropic.translate_response import anthropic_usage, message_id, stop_reason, tool_use_id
from cortex_gateway.translator import ProgressClock
from neuron.shared.errors import ApiError

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
EMPTY_DELTA = {"thinking": {"type": "thinking_delta", "thinking": ""}, "text": {"type": "text_delta", "text": ""},
               "tool_use": {"type": "input_json_delta", "partial_json": ""}}


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamTranslator(ProgressClock):
    """One answer as Anthropic's events (a `cortex_gateway.translator.Translator`)."""

    plain = PING

    def __init__(self, model: str, stops: list[str], prompt_tokens: int = 0, now: float | None = None):
        super().__init__(now)
        self.model = model
        self.stops = stops
        self.id = message_id()
        self.block = -1  # index of the open block, -1 when none
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool index -> our block index
        self.current_tool: int | None = None
        self.finish_reason: str | None = None
        self.matched: str | None = None
        # Until the final usage splits off what the prefix cache served, the whole prompt counts as input.
        self.message_usage = {"input_tokens": prompt_tokens, "output_tokens": 0}
        self.started = False

    @property
    def usage(self) -> dict:
        """The usage in the neurons' terms: the prompt is what was read from the cache and the rest."""
        u = self.message_usage
        return {"prompt_tokens": u["input_tokens"] + u.get("cache_read_input_tokens", 0),
                "completion_tokens": u["output_tokens"]}

    def start(self, prompt_tokens: int | None = None, now: float | None = None) -> bytes:
        if prompt_tokens is not None:
            self.message_usage["input_tokens"] = prompt_tokens
        self.started = True
        self.sent(now)
        return sse("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": dict(self.message_usage)}})

    def progress(self, now: float) -> bytes:
        """message_start if it was not sent, else an empty delta in the open block or an empty thinking block."""
        if not self.started:
            return self.start(now=now)
        if self.block_kind is None:
            return self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        return sse("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                           "delta": EMPTY_DELTA[self.block_kind]})

    def feed(self, chunk: dict, now: float | None = None) -> bytes:
        out = [] if self.started else [self.start()]
        if isinstance(chunk.get("usage"), dict):
            self.message_usage = anthropic_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._text(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        data = b"".join(out)
        if data:
            self.sent(now)
        return data

    def _open(self, kind: str, block: dict) -> bytes:
        out = self._close()
        self.block += 1
        self.block_kind = kind
        return out + sse("content_block_start", {"type": "content_block_start", "index": self.block,
                                                 "content_block": block})

    def _close(self) -> bytes:
        if self.block_kind is None:
            return b""
        self.block_kind, self.current_tool = None, None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _text(self, text: str) -> bytes:
        out = b"" if self.block_kind == "text" else self._open("text", {"type": "text", "text": ""})
        return out + sse("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                 "delta": {"type": "text_delta", "text": text}})

    def _tool(self, call: dict) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        if index not in self.tool_blocks:
            out = self._open("tool_use", {"type": "tool_use", "id": tool_use_id(call.get("id")),
                                          "name": fn.get("name", ""), "input": {}})
            self.tool_blocks[index] = self.block
            self.current_tool = index
        elif index != self.current_tool:
            return b""  # a late piece for a closed block cannot be placed; OpenAI streams calls in order
        if fn.get("arguments"):
            out += sse("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                               "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})
        return out

    def finish(self) -> bytes:
        out = [] if self.started else [self.start()]
        out.append(self._close())
        reason, sequence = stop_reason(self.finish_reason, self.matched, self.stops)
        if self.tool_blocks and reason == "end_turn":
            reason = "tool_use"
        out.append(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                         "usage": dict(self.message_usage)}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def fail(self, err: ApiError) -> bytes:
        """Anthropic ends a failed stream with one `error` event, whatever was sent before it."""
        return error_event(err)
