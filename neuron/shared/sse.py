"""Server-sent events in the OpenAI chunk shapes, framed with as little work per token as possible.

Each stream precomputes the bytes around the text of a chunk, so a token costs
one orjson.dumps of its text and a concatenation. Every stream of both servers
is a `BoundedStream`: a client that stops reading loses its stream after
`write_timeout_s`, instead of holding its request (and a model's slot) for as
long as it keeps the socket open.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
from aiohttp import web

from neuron.shared.errors import ApiError
from neuron.shared.request_context import REQUEST_ID

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The prompt's token count, known before the first byte: the Anthropic dialect's message_start carries it.
PROMPT_TOKENS_HEADER = "X-Cortex-Prompt-Tokens"
# Usage as an SSE comment, sent on every stream: clients skip comments, so a client that did not ask for
# a usage chunk (stream_options.include_usage) gets none, while the gateway still reads it for metrics.
USAGE_COMMENT = b": cortex-usage "
# [neuron] / [gateway] write_timeout_s, set by each server's create_app.
WRITE_TIMEOUT_S = web.AppKey("write_timeout_s", float)
DEFAULT_WRITE_TIMEOUT_S = 60.0
# asyncio's transports pause (and aiohttp's write waits) only past a 64 KiB buffer, so a write this small
# into an empty buffer cannot wait: it needs no deadline (a timer per token costs real CPU).
_CANNOT_WAIT = 16 * 1024

log = logging.getLogger("cortex.shared.sse")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ClientStalled(ConnectionResetError):
    """The client read nothing for write_timeout_s and its connection was dropped. A ConnectionResetError,
    so every writer ends the request as it does for a client that left, and frees what it held."""


class BoundedStream(web.StreamResponse):
    """A stream whose writes must reach the socket within `write_timeout_s`.

    aiohttp's write waits for the socket to drain once its buffer passes the high-water mark, and waits
    as long as the socket stays open: a client that never reads would keep its request running, its
    model slot taken, until it disconnects. Here a write (or the end of the stream) that waits longer
    drops the connection, logs a warning under the request's id and raises ClientStalled."""

    def __init__(self, write_timeout_s: float, headers: dict[str, str]):
        super().__init__(headers=headers)
        self.write_timeout_s = write_timeout_s
        self._transport: asyncio.Transport | None = None
        self._request_id: str | None = None

    async def prepare(self, request: web.BaseRequest):
        self._transport, self._request_id = request.transport, request.get(REQUEST_ID)
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        transport = self._transport
        if transport is not None and len(data) < _CANNOT_WAIT and not transport.get_write_buffer_size():
            await super().write(data)  # the socket keeps up: nothing to wait for
            return
        await self._within_deadline(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        await self._within_deadline(super().write_eof(data))  # it waits for the last bytes to drain

    async def _within_deadline(self, step) -> None:
        try:
            async with asyncio.timeout(self.write_timeout_s):  # no task per write, unlike wait_for
                await step
        except TimeoutError:
            log.warning("the client read nothing for %gs (write_timeout_s): its stream is ended and what it "
                        "held is freed", self.write_timeout_s, extra={"request_id": self._request_id})
            if self._transport is not None:
                self._transport.abort()  # close() would wait for the buffer to drain: never, here
            raise ClientStalled(f"the client read nothing for {self.write_timeout_s:g}s") from None


async def open_stream(request: web.Request, headers: dict[str, str] | None = None) -> BoundedStream:
    """An SSE stream, prepared, bounded by the server's write_timeout_s."""
    deadline = request.config_dict.get(WRITE_TIMEOUT_S, DEFAULT_WRITE_TIMEOUT_S)
    resp = BoundedStream(deadline, headers={**SSE_HEADERS, **(headers or {})})
    await resp.prepare(request)
    return resp


def event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def error_event(err: ApiError) -> bytes:
    return event(err.envelope())


class ChunkFramer:
    """Chunks of one chat or text completion stream."""

    def __init__(self, model: str, chat: bool, index: int = 0, of: ChunkFramer | None = None):
        self.chat = chat
        self.id = of.id if of else new_id("chatcmpl" if chat else "cmpl")
        self.created = of.created if of else int(time.time())
        self.model = model
        head = {"id": self.id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": self.created, "model": model}
        self._head = orjson.dumps(head)[:-1] + b',"choices":[{"index":%d,' % index
        self._text_open = self._head + (b'"delta":{"content":' if chat else b'"text":')
        self._text_close = b'},"finish_reason":null}]}\n\n' if chat else b',"logprobs":null,"finish_reason":null}]}\n\n'

    @classmethod
    def for_choices(cls, model: str, chat: bool, n: int) -> list[ChunkFramer]:
        """One framer per choice of a request: the same id and time, each with its own index."""
        first = cls(model, chat)
        return [first] + [cls(model, chat, i, of=first) for i in range(1, n)]

    def role(self) -> bytes:
        if not self.chat:
            return b""
        return b"data: " + self._head + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

    def text(self, text: str, logprobs: list[dict] | None = None) -> bytes:
        if logprobs is None:
            return b"data: " + self._text_open + orjson.dumps(text) + self._text_close
        if self.chat:
            shaped = {"content": logprobs, "refusal": None}
            close = b'},"logprobs":' + orjson.dumps(shaped) + b',"finish_reason":null}]}\n\n'
        else:
            close = b',"logprobs":' + orjson.dumps(completion_logprobs(logprobs)) + b',"finish_reason":null}]}\n\n'
        return b"data: " + self._text_open + orjson.dumps(text) + close

    def delta(self, delta: dict) -> bytes:
        return b"data: " + self._head + b'"delta":' + orjson.dumps(delta) + b',"finish_reason":null}]}\n\n'

    def finish(self, reason: str, stop_sequence: str | None = None) -> bytes:
        body = b'"delta":{}' if self.chat else b'"text":"","logprobs":null'
        # stop_reason: the matched stop string, as vLLM reports it (clients may ignore it).
        return (b"data: " + self._head + body + b',"finish_reason":' + orjson.dumps(reason)
                + b',"stop_reason":' + orjson.dumps(stop_sequence) + b"}]}\n\n")

    def tool_call(self, index: int, call, piece: int = 24) -> bytes:
        """A tool call as OpenAI streams it: id and name first, then the arguments in pieces."""
        head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        parts = [self.delta({"tool_calls": [head]})]
        for i in range(0, len(call.arguments), piece):
            chunk = {"index": index, "function": {"arguments": call.arguments[i:i + piece]}}
            parts.append(self.delta({"tool_calls": [chunk]}))
        return b"".join(parts)

    def usage(self, prompt: int, completion: int, cached: int = 0, chunk: bool = True,
              predicted: tuple[int, int] | None = None) -> bytes:
        """The usage comment, and the usage chunk when the client asked for it."""
        usage = usage_dict(prompt, completion, cached, predicted)
        comment = USAGE_COMMENT + orjson.dumps(usage) + b"\n\n"
        if not chunk:
            return comment
        return comment + event({"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                      "created": self.created, "model": self.model, "choices": [], "usage": usage})


def usage_dict(prompt: int, completion: int, cached: int = 0, predicted: tuple[int, int] | None = None) -> dict:
    """OpenAI's usage, with the prompt tokens whose computation was reused (prefix cache) as cached_tokens,
    and, for a request with a prediction, its (accepted, rejected) tokens as completion_tokens_details. The
    rejected ones are not in completion_tokens: OpenAI bills them, but they are no part of the answer."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached}}
    if predicted is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "accepted_prediction_tokens": predicted[0],
                                              "rejected_prediction_tokens": predicted[1]}
    return usage


def completion_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """The legacy completions shape (tokens, token_logprobs, top_logprobs, text_offset) from chat entries."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}
