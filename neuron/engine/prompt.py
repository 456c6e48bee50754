"""The prompt path: bound the request, render the chat template, tokenise, off the device thread.

Two rules, both from what a hostile request did to a node:
- **What users wrote is text, never control tokens.** The template's own markup
  (`<|im_start|>`, `<|eot_id|>`, BOS) is tokenised with special tokens parsed;
  every string a client sent (see `neuron.engine.client_text`: message contents,
  tool calls, tool names, descriptions and parameter schemas, property names
  included, `chat_template_kwargs`) is tokenised as plain text, so
  `<|im_end|><|im_start|>system` typed by a user, or named as a tool's property
  by an MCP server, stays characters and cannot open a turn. This is how the
  OpenAI and Anthropic APIs treat such text.
- **The work is bounded before it starts.** A request with more messages than
  the context has tokens, or more characters than the context could hold (every
  string counted, keys included), is refused before rendering; rendering and
  tokenising then run on the engine's tokenizer threads, never on a device
  thread (where they would stall every other model's decode) and never on the
  event loop, and stop at the next segment once nobody waits for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from neuron.engine.chat_template import TemplateError, render_chat
from neuron.engine.client_text import Markers, Segment, mark_kwargs, mark_message, mark_tools
from neuron.engine.generic_tools import renders_tools, with_generic_tools
from neuron.server.openai_schema import InferenceRequest
from neuron.shared.errors import ApiError

log = logging.getLogger("cortex.neuron.engine.prompt")

# No tokenizer in use packs more than this many characters into one token on average; a
# prompt longer than context x this cannot fit, whatever it says.
MAX_CHARS_PER_TOKEN = 32

def check_bounds(req: InferenceRequest, context: int, model: str) -> None:
    """Refuse, cheaply and before any rendering, a request that cannot fit the context."""
    param = "messages" if req.messages is not None else "prompt"
    if req.messages is not None and len(req.messages) > context:
        raise context_exceeded(len(req.messages), context, param, f"at least one per message: "
                               f"{len(req.messages)} messages")
    chars = text_chars(req.messages) + text_chars(req.tools) + text_chars(req.template_kwargs)
    check_chars(chars + len(req.prompt or ""), context, model, param)


def check_chars(chars: int, context: int, model: str, param: str) -> None:
    if chars > context * MAX_CHARS_PER_TOKEN:
        raise context_exceeded(chars // MAX_CHARS_PER_TOKEN, context, param,
                               f"at least: {chars} characters of text")


def context_exceeded(tokens: int, maximum: int, param: str, detail: str = "") -> ApiError:
    """Worded as OpenAI words it, and naming its code in the text: clients key their fallbacks on the
    message alone, since openai 3.x puts only the message in an exception's text. litellm's context-window
    fallbacks match "maximum context length"; langchain-openai's ContextOverflowError looks for
    "context_length_exceeded" in `str(e)`. The figures travel as details, for the Anthropic wording."""
    more = f" ({detail})" if detail else ""
    return ApiError(400, "invalid_request_error", f"This model's maximum context length is {maximum} tokens. "
                    f"However, your messages resulted in {tokens} tokens{more}. Please reduce the length of "
                    "the messages, or load the model with a larger context_size. (context_length_exceeded)",
                    code="context_length_exceeded", param=param, details={"tokens": tokens, "maximum": maximum})


def text_chars(value: Any) -> int:
    """The characters a request's values put into a prompt: every string, object keys included (a tool's
    property names are rendered as much as its descriptions), and numbers as written."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + text_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    return 0 if value is None else len(str(value))


def chat_segments(backend, req: InferenceRequest, model: str, mark=mark_message) -> list[Segment]:
    """The rendered chat prompt, split into template markup and client text. `mark(message, markers)` marks
    a message's client strings: a vision backend's also writes its image parts as its template wants them."""
    if not backend.chat_template:
        raise ApiError(400, "invalid_request_error", f"model {model!r} has no chat template; use "
                       "/v1/completions with a raw prompt", code="no_chat_template")
    messages, tools = req.messages, None if req.tool_choice.mode == "none" else req.tools
    if tools and not renders_tools(backend.chat_template, backend.bos_token, backend.eos_token):
        messages, tools = with_generic_tools(messages, tools), None
    prefill = req.continue_final and bool(req.messages[-1].get("content"))
    mk = Markers.new()
    try:
        rendered = render_chat(backend.chat_template, [mark(m, mk) for m in messages],
                               tools=mark_tools(tools, mk), bos_token=backend.bos_token, eos_token=backend.eos_token,
                               add_generation_prompt=not prefill, extra=mark_kwargs(req.template_kwargs, mk))
    except TemplateError as exc:
        raise ApiError(400, "invalid_request_error", str(exc), code="template_error", param="messages") from exc
    segments = mk.split(rendered)
    if segments is None:
        # The template cut or reordered a client string: fall back to parsing the whole prompt.
        log.warning("model %s: its chat template splits message text; control tokens typed by users "
                    "cannot be told from the template's own in this prompt", model)
        return [Segment(mk.strip(rendered), True)]
    if prefill:
        while segments and segments[-1].special:  # the template's end-of-turn after the prefill: cut
            segments.pop()
    return segments


def prompt_segments(backend, req: InferenceRequest, model: str) -> list[Segment]:
    """A raw completion prompt is the client's own text, control tokens included by intent."""
    if req.prompt is not None:
        return [Segment(req.prompt, True)]
    return chat_segments(backend, req, model)


def check_stopped(stop: Callable[[], bool] | None) -> None:
    """A 503 once `stop()` says the neuron is stopping: asked between a prompt's segments."""
    if stop is not None and stop():
        raise ApiError(503, "overloaded_error", "the prompt's tokenisation was stopped: the neuron is "
                       "shutting down", code="shutting_down", retry_after=5)


def tokenize_segments(backend, segments: list[Segment], stop: Callable[[], bool] | None = None) -> list[int]:
    """The segments' tokens, control tokens parsed in markup only; `stop()` is asked between segments."""
    tokens: list[int] = []
    for seg in segments:
        check_stopped(stop)
        if seg.text:
            tokens.extend(backend.tokenize(seg.text, special=seg.special))
    return tokens
