"""Parsing a model's tool calls out of its text, streaming or not.

Two output forms are understood, the ones open chat templates teach:
- `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen, Hermes), anywhere in
  the text, any number of times; a call ends at the tag after its JSON object, so an
  argument may hold `</tool_call>` itself;
- the whole answer being one JSON object `{"name": ..., "arguments"|"parameters": {...}}`
  (Llama 3.x style), recognised only when the name is one of the request's tools.
Text outside tool calls streams as it comes; only a possible partial `<tool_call>` is
held back, as stop sequences are.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from neuron.shared.errors import ApiError
from neuron.shared.http import check_depth

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI dialect carries it
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"


def _as_call(text: str, tool_names: set[str]) -> ToolCall | None:
    try:
        obj = json.loads(text)
        check_depth(obj)  # a model can nest deeper than any client may send: such a "call" stays text
    except (ValueError, RecursionError, ApiError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments already encoded
        try:
            args = json.loads(args)
            check_depth(args)
        except (ValueError, RecursionError, ApiError):
            return None
    if not isinstance(args, dict):
        return None
    if tool_names and obj["name"] not in tool_names:
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class _ObjectEnd:
    """Where a JSON object ends in a text that grows (a call's body, streamed): strings are skipped whole,
    so a `}` or a `</tool_call>` inside one ends nothing. Each character is read once however the text
    comes, so a long call costs no more streamed than whole."""

    def __init__(self) -> None:
        self.seen, self.depth, self.in_string, self.escaped = 0, 0, False, False
        self.end: int | None = None  # past the closing brace; -1 when the body is no object

    def find(self, text: str) -> int | None:
        """The end (or -1), or None while the text has not got that far."""
        while self.end is None and self.seen < len(text):
            self._read(text[self.seen])
            self.seen += 1
        return self.end

    def _read(self, c: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
        elif self.depth == 0:  # before the object: only spaces may come first
            if c == "{":
                self.depth = 1
            elif not c.isspace():
                self.end = -1
        elif c == '"':
            self.in_string = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.end = self.seen + 1


class ToolCallParser:
    """Feed text deltas; get back text to emit and tool calls as they complete."""

    def __init__(self, tool_names: set[str], max_calls: int | None = None):
        self.tool_names = tool_names
        self.max_calls = max_calls  # parallel_tool_calls false: 1; calls beyond it are dropped
        self.pending = ""  # text not yet emitted (a partial tag, or a tool call body)
        self.inside = False
        self.body = _ObjectEnd()  # of the call we are inside
        self.maybe_json = None  # None: undecided; True: the answer began with "{"
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self.pending += text
        if self.maybe_json is None:
            stripped = self.pending.lstrip()
            if not stripped:
                return "", []
            self.maybe_json = stripped.startswith("{")
        if self.maybe_json:
            return "", []  # decided at the end: a bare JSON answer is all or nothing
        return self._scan()

    def _scan(self) -> tuple[str, list[ToolCall]]:
        out, calls = [], []
        while True:
            if self.inside:
                end = self._call_end()
                if end is None:
                    return "".join(out), calls
                text, found = self._ended(end[0], end[1])
                out.append(text)
                calls += found
                continue
            start = self.pending.find(OPEN)
            if start >= 0:
                out.append(self.pending[:start])
                self.pending = self.pending[start + len(OPEN):]
                self.inside, self.body = True, _ObjectEnd()
                continue
            keep = _partial_tag_suffix(self.pending)
            out.append(self.pending[: len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
            return "".join(out), calls

    def _call_end(self) -> tuple[int, int] | None:
        """(end of the body, end of its closing tag) in `pending`, or None until known.

        A call's body is a JSON object, whose strings may hold `</tool_call>` (a forced call's grammar
        allows any string): the tag that ends the call is the one after the object. A body that is no
        object, or one followed by something else, ends at the next tag, as a model's broken call does."""
        text, end = self.pending, self.body.find(self.pending)
        if end is None:
            return None
        after = text[max(end, 0):]
        gap = len(after) - len(after.lstrip())
        if end >= 0 and after[gap:].startswith(CLOSE):
            return end + gap, end + gap + len(CLOSE)
        if end >= 0 and CLOSE.startswith(after[gap:]):
            return None  # the tag is on its way
        close = text.find(CLOSE, max(end, 0))
        return None if close < 0 else (close, close + len(CLOSE))

    def _ended(self, body_end: int, tag_end: int) -> tuple[str, list[ToolCall]]:
        """The call in pending[:body_end] is over: the call, or its markup as text when it is none."""
        body, self.pending, self.inside = self.pending[:body_end], self.pending[tag_end:], False
        call = _as_call(body.strip(), self.tool_names)
        if call is None:
            return OPEN + body + CLOSE, []  # not a valid call: it was text after all
        if not self._room():
            return "", []
        self.calls.append(call)
        return "", [call]

    def _room(self) -> bool:
        return self.max_calls is None or len(self.calls) < self.max_calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Flush at the end of generation. A call cut off (by max_tokens) is still a call, with the
        arguments it got, as OpenAI and Anthropic send one: the markup never reaches the client as text."""
        if self.maybe_json:
            rest, self.pending = self.pending, ""
            call = _as_call(rest.strip(), self.tool_names)
            if call is not None:
                self.calls.append(call)
                return "", [call]
            return rest, []
        if not self.inside:
            rest, self.pending = self.pending, ""
            return rest, []
        # An object never closed was cut off, unless a closing tag has text after it (a string never closed).
        rest, close = self.pending, self.pending.find(CLOSE) if self.body.end is None else -1
        call = None
        if close < 0 or not rest[close + len(CLOSE):].strip():
            call = _as_call(_without_partial_close(rest).strip(), self.tool_names) or _cut_call(rest, self.tool_names)
        if call is None and close >= 0:
            return self._broken_at(close)
        self.pending = ""
        if call is None or not self._room():
            return "", []
        self.calls.append(call)
        return "", [call]

    def _broken_at(self, close: int) -> tuple[str, list[ToolCall]]:
        """End the call at the tag at `close` and parse on: what follows may hold text and calls."""
        text, calls = self._ended(close, close + len(CLOSE))
        more, found = self._scan()
        tail, last = self.finish()
        return text + more + tail, calls + found + last


_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def _without_partial_close(text: str) -> str:
    """`text` without a trailing start of `</tool_call>` (the cut fell inside the closing tag)."""
    for n in range(min(len(text), len(CLOSE)), 0, -1):
        if CLOSE.startswith(text[-n:].lstrip()) and text[-n:].strip():
            return text[:-n]
    return text


def _cut_call(body: str, tool_names: set[str]) -> ToolCall | None:
    """A call whose JSON was cut off: its name, and the arguments' text as far as it got."""
    name = _NAME.search(body)
    if name is None or (tool_names and name.group(1) not in tool_names):
        return None
    args = _ARGS.search(body)
    return ToolCall(name.group(1), body[args.end():].rstrip() if args else "")


def _partial_tag_suffix(text: str) -> int:
    for n in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def parse_all(text: str, tool_names: set[str], max_calls: int | None = None) -> tuple[str, list[ToolCall]]:
    """Non-streaming: the content left and the tool calls found."""
    parser = ToolCallParser(tool_names, max_calls)
    head, calls = parser.feed(text)
    tail, more = parser.finish()
    return head + tail, calls + more
