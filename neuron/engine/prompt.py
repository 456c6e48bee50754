"""The prompt path: bound the request, render the chat template, tokenise, off the device thread.

Two rules, both from what a hostile request did to a node:
- **What users wrote is text, never control tokens.** The template's own markup
  (`<|im_start|>`, `<|eot_id|>`, BOS) is tokenised with special tokens parsed;
  every string a client sent (message contents, tool-call arguments, tool
  descriptions) is tokenised as plain text, so `<|im_end|><|im_start|>system`
  typed by a user stays characters and cannot open a turn. This is how the
  OpenAI and Anthropic APIs treat such text. To tell the two apart after
  rendering, client strings are wrapped in two Unicode noncharacters
  (U+FDD0/U+FDD1, never valid in interchange, stripped from input first).
- **The work is bounded before it starts.** A request with more messages than
  the context has tokens, or more characters than the context could hold, is
  refused before rendering; rendering and tokenising then run on the
  engine's tokenizer threads, never on a device thread (where they would
  stall every other model's decode) and never on the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from neuron.engine.chat_template import TemplateError, render_chat
from neuron.engine.generic_tools import renders_tools, with_generic_tools
from neuron.errors import ApiError
from neuron.openai_schema import InferenceRequest

log = logging.getLogger(__name__)

OPEN, CLOSE = "\ufdd0", "\ufdd1"
_STRIP = str.maketrans("", "", OPEN + CLOSE)
# No tokenizer in use packs more than this many characters into one token on average; a
# prompt longer than context x this cannot fit, whatever it says.
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class Segment:
    text: str
    special: bool  # parse control tokens in it (template markup) or not (what a client wrote)


def check_bounds(req: InferenceRequest, context: int, model: str) -> None:
    """Refuse, cheaply and before any rendering, a request that cannot fit the context."""
    param = "messages" if req.messages is not None else "prompt"
    if req.messages is not None and len(req.messages) > context:
        raise context_exceeded(len(req.messages), context, param, f"at least one per message: "
                               f"{len(req.messages)} messages")
    check_chars(_chars(req.messages) + _chars(req.tools) + len(req.prompt or ""), context, model, param)


def check_chars(chars: int, context: int, model: str, param: str) -> None:
    if chars > context * MAX_CHARS_PER_TOKEN:
        raise context_exceeded(chars // MAX_CHARS_PER_TOKEN, context, param,
                               f"at least: {chars} characters of text")


def context_exceeded(tokens: int, maximum: int, param: str, detail: str = "") -> ApiError:
    """Worded as OpenAI words it: clients (litellm's fallbacks, LangChain's ContextOverflowError) match
    on "maximum context length". The figures travel as details, for the Anthropic wording."""
    more = f" ({detail})" if detail else ""
    return ApiError(400, "invalid_request_error", f"This model's maximum context length is {maximum} tokens. "
                    f"However, your messages resulted in {tokens} tokens{more}. Please reduce the length of "
                    "the messages, or load the model with a larger context_size.", code="context_length_exceeded",
                    param=param, details={"tokens": tokens, "maximum": maximum})


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def chat_segments(backend, req: InferenceRequest, model: str) -> list[Segment]:
    """The rendered chat prompt, split into template markup and client text."""
    if not backend.chat_template:
        raise ApiError(400, "invalid_request_error", f"model {model!r} has no chat template; use "
                       "/v1/completions with a raw prompt", code="no_chat_template")
    messages, tools = req.messages, None if req.tool_choice.mode == "none" else req.tools
    if tools and not renders_tools(backend.chat_template, backend.bos_token, backend.eos_token):
        messages, tools = with_generic_tools(messages, tools), None
    prefill = req.continue_final and bool(req.messages[-1].get("content"))
    try:
        rendered = render_chat(backend.chat_template, [_mark_message(m) for m in messages],
                               tools=_mark_tools(tools), bos_token=backend.bos_token, eos_token=backend.eos_token,
                               add_generation_prompt=not prefill, extra=_mark_all_strings(req.template_kwargs))
    except TemplateError as exc:
        raise ApiError(400, "invalid_request_error", str(exc), code="template_error", param="messages") from exc
    segments = split_marked(rendered)
    if prefill and segments:
        while segments and segments[-1].special:  # the template's end-of-turn after the prefill: cut
            segments.pop()
    if segments is None:
        # The template cut or reordered a client string: fall back to parsing the whole prompt.
        log.warning("model %s: its chat template splits message text; control tokens typed by users "
                    "cannot be told from the template's own in this prompt", model)
        return [Segment(rendered.translate(_STRIP), True)]
    return segments


def prompt_segments(backend, req: InferenceRequest, model: str) -> list[Segment]:
    """A raw completion prompt is the client's own text, control tokens included by intent."""
    if req.prompt is not None:
        return [Segment(req.prompt, True)]
    return chat_segments(backend, req, model)


def tokenize_segments(backend, segments: list[Segment]) -> list[int]:
    tokens: list[int] = []
    for seg in segments:
        if seg.text:
            tokens.extend(backend.tokenize(seg.text, special=seg.special))
    return tokens


def split_marked(rendered: str) -> list[Segment] | None:
    """Split at the markers; None when they do not pair up (the template mangled a marked string)."""
    head, *marked = rendered.split(OPEN)
    if CLOSE in head:
        return None
    segments = [Segment(head, True)] if head else []
    for piece in marked:
        client_text, closed, rest = piece.partition(CLOSE)
        if not closed or CLOSE in rest:
            return None
        segments += [s for s in (Segment(client_text, False), Segment(rest, True)) if s.text]
    return segments


def _mark(text: str) -> str:
    return OPEN + text.translate(_STRIP) + CLOSE if text else text


def _mark_message(message: dict) -> dict:
    out = {**message, "content": _mark(message.get("content") or "")}
    if message.get("tool_calls"):
        out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _mark(c["function"]["arguments"])}}
                             for c in message["tool_calls"]]
    return out


def _mark_tools(tools: list[dict] | None) -> list[dict] | None:
    return None if tools is None else [_mark_descriptions(t) for t in tools]


def _mark_all_strings(value: Any) -> Any:
    """Every string in chat_template_kwargs is the client's text (a template may print it into the prompt)."""
    if isinstance(value, str):
        return _mark(value)
    if isinstance(value, dict):
        return {k: _mark_all_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_all_strings(v) for v in value]
    return value


def _mark_descriptions(value: Any) -> Any:
    """Descriptions are free text a client wrote; names and types drive template logic and stay as they are."""
    if isinstance(value, dict):
        return {k: _mark(v) if k == "description" and isinstance(v, str) else _mark_descriptions(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_descriptions(v) for v in value]
    return value
