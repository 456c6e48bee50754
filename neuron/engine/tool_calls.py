"""Parsing a model's tool calls out of its text, streaming or not.

Two output forms are understood, the ones open chat templates teach:
- `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen, Hermes), anywhere in
  the text, any number of times;
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
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments already encoded
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    if tool_names and obj["name"] not in tool_names:
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


class ToolCallParser:
    """Feed text deltas; get back text to emit and tool calls as they complete."""

    def __init__(self, tool_names: set[str], max_calls: int | None = None):
        self.tool_names = tool_names
        self.max_calls = max_calls  # parallel_tool_calls false: 1; calls beyond it are dropped
        self.pending = ""  # text not yet emitted (a partial tag, or a tool call body)
        self.inside = False
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
                end = self.pending.find(CLOSE)
                if end < 0:
                    return "".join(out), calls
                body, self.pending = self.pending[:end], self.pending[end + len(CLOSE):]
                self.inside = False
                call = _as_call(body.strip(), self.tool_names)
                if call is None:
                    out.append(OPEN + body + CLOSE)  # not a valid call: it was text after all
                elif self._room():
                    calls.append(call)
                    self.calls.append(call)
                continue
            start = self.pending.find(OPEN)
            if start >= 0:
                out.append(self.pending[:start])
                self.pending = self.pending[start + len(OPEN):]
                self.inside = True
                continue
            keep = _partial_tag_suffix(self.pending)
            out.append(self.pending[: len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
            return "".join(out), calls

    def _room(self) -> bool:
        return self.max_calls is None or len(self.calls) < self.max_calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Flush at the end of generation. A call cut off (by max_tokens) is still a call, with the
        arguments it got, as OpenAI and Anthropic send one: the markup never reaches the client as text."""
        rest, self.pending = self.pending, ""
        if self.maybe_json:
            call = _as_call(rest.strip(), self.tool_names)
            if call is not None:
                self.calls.append(call)
                return "", [call]
            return rest, []
        if not self.inside:
            return rest, []
        call = _as_call(_without_partial_close(rest).strip(), self.tool_names) or _cut_call(rest, self.tool_names)
        if call is None or not self._room():
            return "", []
        self.calls.append(call)
        return "", [call]


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
