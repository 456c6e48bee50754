"""Shaping a request's generations into OpenAI answers: one JSON body, or one SSE stream.

A request with `n` choices has one generation per choice. Non-streaming, they
are collected together; streaming, each is pumped as it produces, its chunks
carrying its choice index, and the stream ends with every choice's finish, one
usage chunk (the prompt counted once) and `[DONE]`. Tool calls are parsed per
choice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from neuron.engine.inference import Generation
from neuron.engine.tool_calls import ToolCallParser, parse_all
from neuron.shared.errors import ApiError
from neuron.shared.sse import (
    DONE,
    KEEPALIVE,
    PROMPT_TOKENS_HEADER,
    ChunkFramer,
    completion_logprobs,
    error_event,
    open_stream,
    usage_dict,
)


@dataclass
class Choice:
    gen: Generation
    framer: ChunkFramer
    parser: ToolCallParser | None

    @property
    def finish_reason(self) -> str:
        if self.parser is not None and self.parser.calls and self.gen.finish_reason == "stop":
            return "tool_calls"
        return self.gen.finish_reason or "stop"


def usage_of(gens: list[Generation]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of a request: its choices share one prompt."""
    first = gens[0].stats
    return first.prompt_tokens, sum(g.stats.completion_tokens for g in gens), first.cached_tokens


def predicted_of(gens: list[Generation]) -> tuple[int, int] | None:
    """(accepted, rejected) prediction tokens over the choices; None for a request without a prediction."""
    if not gens[0].stats.predicted:
        return None
    return (sum(g.stats.prediction_accepted for g in gens), sum(g.stats.prediction_rejected for g in gens))


async def collect_choices(choices: list[Choice]) -> dict:
    bodies = await asyncio.gather(*(_collect(c, i) for i, c in enumerate(choices)))
    framer = choices[0].framer
    prompt, completion, cached = usage_of([c.gen for c in choices])
    return {"id": framer.id, "object": "chat.completion" if framer.chat else "text_completion",
            "created": framer.created, "model": framer.model, "choices": bodies,
            "usage": usage_dict(prompt, completion, cached, predicted_of([c.gen for c in choices]))}


async def _collect(choice: Choice, index: int) -> dict:
    parts, entries, asked = [], [], False
    async for batch in choice.gen.batches():
        for d in batch:
            parts.append(d.text)
            if d.logprobs is not None:
                asked = True
                entries.extend(d.logprobs)
    text, gen, parser = "".join(parts), choice.gen, choice.parser
    if not choice.framer.chat:
        return {"index": index, "text": text, "finish_reason": gen.finish_reason, "stop_reason": gen.stop_sequence,
                "logprobs": completion_logprobs(entries) if asked else None}
    message = {"role": "assistant", "content": text}
    if parser is not None:
        content, calls = parse_all(text, parser.tool_names, parser.max_calls)
        parser.calls = calls
        message["content"] = content or (None if calls else "")
        if calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return {"index": index, "message": message, "finish_reason": choice.finish_reason,
            "stop_reason": gen.stop_sequence, "logprobs": {"content": entries, "refusal": None} if asked else None}


async def stream_choices(request: web.Request, choices: list[Choice], keepalive_s: float,
                         include_usage: bool, opened: web.StreamResponse | None = None) -> web.StreamResponse:
    """The answer as SSE, on `opened` if the request's stream was opened while it queued."""
    prompt_tokens = str(choices[0].gen.stats.prompt_tokens)
    resp = opened or await open_stream(request, {PROMPT_TOKENS_HEADER: prompt_tokens})
    lock = asyncio.Lock()  # one SSE event at a time, whichever choice it is from

    async def write(data: bytes) -> None:
        if data:
            async with lock:
                await resp.write(data)

    try:
        await write(b"".join(c.framer.role() for c in choices))
        pumps = [asyncio.ensure_future(_pump(c, write, keepalive_s if i == 0 else None))
                 for i, c in enumerate(choices)]
        try:
            await asyncio.gather(*pumps)
        finally:  # one choice failed or the client left: the others stop too (their slots free at once)
            for pump in pumps:
                pump.cancel()
        prompt, completion, cached = usage_of([c.gen for c in choices])
        await write(b"".join(c.framer.finish(c.finish_reason, c.gen.stop_sequence) for c in choices)
                    + choices[0].framer.usage(prompt, completion, cached, include_usage,
                                              predicted_of([c.gen for c in choices])) + DONE)
    except ApiError as err:
        # Headers are gone: the client learns of the failure from an error event.
        await write(error_event(err) + DONE)
    except (ConnectionResetError, ConnectionError):
        pass  # the client left; `batches` has already told the decode loop to stop
    return resp


async def _pump(choice: Choice, write, keepalive_s: float | None) -> None:
    """Write one choice's text as it comes; the first choice also keeps the connection alive."""
    framer, parser = choice.framer, choice.parser
    held: list[dict] | None = None  # logprob entries of tokens whose text the tool-call parser holds back
    async for batch in choice.gen.batches(keepalive_s):
        if batch is None:
            await write(KEEPALIVE)
            continue
        text = "".join(d.text for d in batch)
        for d in batch:
            if d.logprobs is not None:
                held = (held or []) + d.logprobs
        text, calls = parser.feed(text) if parser else (text, [])
        await write(_frame(framer, parser, text, calls, held if text else None))
        if text:
            held = None
    if parser is not None:
        await write(_frame(framer, parser, *parser.finish(), held))


def _frame(framer: ChunkFramer, parser: ToolCallParser | None, text: str, calls: list,
           logprobs: list[dict] | None = None) -> bytes:
    out = framer.text(text, logprobs) if text else b""
    if calls:
        first = len(parser.calls) - len(calls)
        out += b"".join(framer.tool_call(first + i, c) for i, c in enumerate(calls))
    return out
