"""Chat completion chunks -> the Responses streaming event sequence.

response.created and response.in_progress; then per output item
response.output_item.added, its content (for a message: content_part.added,
output_text.delta..., output_text.done, content_part.done; for a function call:
function_call_arguments.delta..., .done) and response.output_item.done; then
response.completed, or response.incomplete when the token limit cut the answer.
Every event carries the next `sequence_number`. Items never interleave: text
after a tool call opens a new message item, as text before one closes its own.
A failure ends the stream with an `error` event and response.failed. A wait
(a cold load, a queue, a long prefill) is filled with SSE comments, which no
client counts as progress: Codex drops a stream after 300 s without an event
and starts over. Past `progress_after` seconds without one, a keep-alive is
therefore a `response.in_progress` event (the lifecycle event the SDK's
accumulator takes at any time; response.created first if it was not sent), by
the rule of `cortex_gateway.translator.ProgressClock`, shared with Anthropic.
The SDK's stream helper rebuilds the response from these events and insists on their
order (response.created first, every delta inside an added item), so this
class is the one place that order is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from cortex_gateway.responses.translate_response import (
    ResponseHead,
    for_client,
    logprobs_of,
    message_item,
    response_usage,
    status_of,
    text_part,
)
from cortex_gateway.translator import ProgressClock
from neuron.shared.errors import ApiError
from neuron.shared.sse import KEEPALIVE


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def failure_code(err: ApiError) -> str:
    """ResponseError.code is one of OpenAI's few values; our own code travels in the error event."""
    if err.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= err.status < 500 else "server_error"


class StreamTranslator(ProgressClock):
    """One answer as the Responses events (a `cortex_gateway.translator.Translator`). `keep` is given the
    completed Response before its last event goes out, so a follow-up sent at once finds it stored."""

    plain = KEEPALIVE

    def __init__(self, head: ResponseHead, keep: Callable[[dict], None] | None = None):
        super().__init__()
        self.head = head
        self.keep = keep
        self.seq = 0
        self.started = False
        self.output: list[dict] = []  # the closed items, in output order
        self.item: dict | None = None  # the open item
        self.pieces: list[str] = []  # the open item's text or arguments so far
        self.logprobs: list[dict] = []  # the open message's logprobs so far
        self.pending: list[dict] = []  # logprobs of tokens whose text has not come yet (a split character)
        self.tools_seen: set[int] = set()  # chat tool-call indexes that have had their item
        self.current_tool: int | None = None
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.final: dict | None = None  # the Response, once the stream completed

    def event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        self.sent()
        return sse(kind, data)

    def start(self, prompt_tokens: int | None = None) -> bytes:
        """response.created and response.in_progress (a Response tells its usage only at its end)."""
        self.started = True
        snapshot = self.head.response("in_progress", [])
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def progress(self, now: float) -> bytes:
        """The stream's start if it was not sent, else one more response.in_progress."""
        if not self.started:
            return self.start()
        return self.event("response.in_progress", response=self.head.response("in_progress", []))

    def feed(self, chunk: dict) -> bytes:
        out = [] if self.started else [self.start()]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            self.pending.extend(logprobs_of(choice.get("logprobs")))
            if delta.get("content"):
                out.append(self._text(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _where(self) -> dict:
        return {"item_id": self.item["id"], "output_index": len(self.output)}

    def _text(self, text: str) -> bytes:
        out = b""
        if self.item is None or self.item["type"] != "message":
            out = self._close("completed") + self._open_message()
        logprobs, self.pending = self.pending, []
        self.pieces.append(text)
        self.logprobs.extend(logprobs)
        return out + self.event("response.output_text.delta", **self._where(), content_index=0, delta=text,
                                logprobs=logprobs)

    def _open_message(self) -> bytes:
        self.item = {**message_item("", "in_progress"), "content": []}
        return (self.event("response.output_item.added", output_index=len(self.output), item=self.item)
                + self.event("response.content_part.added", **self._where(), content_index=0, part=text_part("")))

    def _tool(self, call: dict) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        if index not in self.tools_seen:
            out = self._close("completed")
            self.pending = []  # the tokens of the call's markup, not of any text
            self.tools_seen.add(index)
            self.current_tool = index
            self.item = self.head.call_item(call.get("id"), fn.get("name") or "", "", "in_progress")
            out += self.event("response.output_item.added", output_index=len(self.output), item=self.item)
        elif index != self.current_tool:
            return b""  # a late piece of a call already closed cannot be placed; servers stream calls in order
        if fn.get("arguments"):
            self.pieces.append(fn["arguments"])
            out += self.event("response.function_call_arguments.delta", **self._where(), delta=fn["arguments"])
        return out

    def _close(self, status: str) -> bytes:
        """Close the open item (if any): its done events, and it joins the output."""
        if self.item is None:
            return b""
        item, where, joined = self.item, self._where(), "".join(self.pieces)
        if item["type"] == "message":
            self.logprobs.extend(self.pending)  # the last tokens' text may never come (a cut character)
            self.pending = []
            part = text_part(joined, self.logprobs)
            done = {**item, "status": status, "content": [part]}
            out = (self.event("response.output_text.done", **where, content_index=0, text=joined,
                              logprobs=self.logprobs)
                   + self.event("response.content_part.done", **where, content_index=0, part=part))
        else:
            done = {**item, "status": status, "arguments": joined}
            out = self.event("response.function_call_arguments.done", **where, name=item["name"], arguments=joined)
        self.item, self.current_tool, self.pieces, self.logprobs = None, None, [], []
        self.output.append(done)
        return out + self.event("response.output_item.done", output_index=where["output_index"], item=done)

    def finish(self) -> bytes:
        """The end of a whole answer: close the open item, then response.completed (or .incomplete)."""
        out = [] if self.started else [self.start()]
        status = status_of(self.finish_reason)
        if self.item is None and not self.output:
            out.append(self._open_message())  # an empty answer is still one (empty) message
        out.append(self._close(status))
        self.final = self.head.response(status, self.output, response_usage(self.usage))
        if self.keep is not None:
            self.keep(self.final)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(kind, response=self.final))
        return b"".join(out)

    def fail(self, err: ApiError) -> bytes:
        """The end of a failed answer: an `error` event, then response.failed with what was produced."""
        err = for_client(err)
        out = [] if self.started else [self.start()]
        out.append(self._close("incomplete"))
        out.append(self.event("error", code=err.code, message=err.message, param=err.param))
        error = {"code": failure_code(err), "message": err.message}
        out.append(self.event("response.failed", response=self.head.response("failed", self.output, error=error)))
        return b"".join(out)

