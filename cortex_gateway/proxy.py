"""Relaying a request to a neuron: body bytes in, bytes or SSE chunks out, as they arrive.

The gateway reads only what it needs: the usage of the answer (for metrics)
and when the first content arrived. A node that fails before answering raises
`RetryElsewhere`; one that fails mid-stream ends the client's stream with an
error event the client can see. Two relays: `relay_stream` passes the bytes
through (OpenAI's dialect), `relay_translated` reads them back into chunks for
a dialect's `Translator` (Anthropic's, Responses').
"""

from __future__ import annotations

import collections
import logging
import re
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web

from cortex_gateway.auth import KEY_NAME
from cortex_gateway.fleet import Node
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.sse_reader import SSEReader, is_keepalive
from cortex_gateway.state import PRIORITY
from cortex_gateway.translator import Translator
from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.protocol import PRIORITY_HEADER, TENANT_HEADER
from neuron.shared.request_context import current_request, with_request_id
from neuron.shared.sse import DONE, USAGE_COMMENT, error_event, open_stream

log = logging.getLogger("cortex.gateway.proxy")
# The end of a stream kept for its usage and [DONE]. By bytes, not by chunks: on a busy machine the last
# write (finish, usage, [DONE]) can arrive in several reads, and keeping two chunks lost the usage.
TAIL_BYTES = 4096
JSON_HEADERS = {"Content-Type": "application/json"}
# A connection closed or reset before any answer (a connection that could not be made at all is a
# ClientConnectorError, a subclass of ClientOSError, and means the node is not there).
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError, aiohttp.ClientOSError)
# Neuron answers that mean "not here after all": try another node.
RETRYABLE_CODES = {"model_recovering", "model_not_found", "model_unloading", "model_loading"}
_USAGE = b'"usage":{'
# Output, not the opening role chunk (whose content is ""): text, or the start of a tool call.
FIRST_OUTPUT = re.compile(rb'"content":"[^"]|"tool_calls":\[')


class RetryElsewhere(Exception):
    """The node failed before any byte reached the client."""

    def __init__(self, message: str, unreachable: bool, code: str | None = None, refused: bool = False):
        super().__init__(message)
        self.unreachable = unreachable
        self.code = code
        # A live node (it answers its health check) closed or reset the connection before answering: its
        # per-client cap, not a failure of the node, so the node is not counted down for it.
        self.refused = refused

    @property
    def node_unusable(self) -> bool:
        """True when the retry must avoid this node; False when only our view of it was stale
        (the model was unloaded there behind our back), so it may load the model again."""
        return self.unreachable or self.code == "model_recovering"


async def _send(session: aiohttp.ClientSession, node: Node, path: str, body: bytes,
                stream: bool = True, content_type: str | None = None) -> aiohttp.ClientResponse:
    for fresh in (False, True):
        try:
            # The neuron logs under the client's request id, and queues by the key's priority and name.
            headers = {**with_request_id(node.client.json_headers), **caller_headers()}
            if content_type is not None:  # a body that is not JSON (an upload) goes with its own type
                headers["Content-Type"] = content_type
            resp = await session.post(node.endpoint + path, data=body, headers=headers)
            break
        except DROPPED as exc:
            # Most often a pooled connection the node closed as idle just as we sent on it, or one past its
            # per-client cap: nothing was processed. If the node answers its health check, once more on a
            # fresh connection; a live node that drops that one too refused us, it did not fail.
            if isinstance(exc, aiohttp.ClientConnectorError) or not await _answers_health(node):
                raise _unreachable(node, exc) from exc
            if fresh:
                raise RetryElsewhere(f"{node.name}: closed the connection before answering ({exc})",
                                     unreachable=False, refused=True) from exc
            log.info("%s: connection closed before an answer (%s); sending again on a fresh one", node.name, exc)
        except aiohttp.ServerTimeoutError as exc:
            # Silent past upstream_read_timeout_s. A node that still answers its health check is busy with a
            # long non-streaming answer, not hung: retrying elsewhere would only double the work.
            if not stream and await _answers_health(node):
                raise ApiError(504, "api_error", f"node {node.name} took longer than upstream_read_timeout_s to "
                               "answer; stream long answers, or raise [gateway] upstream_read_timeout_s",
                               code="upstream_timeout") from exc
            raise _unreachable(node, exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(node, exc) from exc
    if resp.status in (404, 503):
        # Read now to see the code; aiohttp keeps the body, so whoever relays it reads it again.
        code = error_from_envelope(resp.status, await resp.read()).code
        if code in RETRYABLE_CODES:
            resp.release()
            raise RetryElsewhere(f"{node.name}: {code}", unreachable=False, code=code)
    return resp


def caller_headers() -> dict[str, str]:
    """Who the current request is for, as the neuron's queue reads it: the key's name (percent-encoded, so any
    name fits in a header) and its priority when the key has one. Built only from what the gateway decided:
    a client's own X-Cortex-* headers are never forwarded (no client header is), so none picks its priority."""
    request = current_request()
    if request is None:
        return {}
    out = {}
    if (name := request.get(KEY_NAME)) is not None:
        out[TENANT_HEADER] = quote(name, safe="")
    if (priority := request.get(PRIORITY)) is not None:
        out[PRIORITY_HEADER] = priority
    return out


async def _answers_health(node: Node) -> bool:
    try:
        await node.client.health(timeout=2.0)
    except ApiError:
        return False
    return True


def _unreachable(node: Node, exc: BaseException) -> RetryElsewhere:
    log.warning("%s: request failed before an answer: %s %s; trying elsewhere", node.name,
                exc.__class__.__name__, exc)
    return RetryElsewhere(f"{node.name}: {exc.__class__.__name__} {exc}", unreachable=True)


async def fetch_json(session, node: Node, path: str, body: bytes) -> tuple[int, bytes]:
    """Send a non-streaming request and read the whole answer (status, raw body)."""
    status, raw, _ = await fetch_answer(session, node, path, body)
    return status, raw


async def fetch_answer(session, node: Node, path: str, body: bytes, content_type: str | None = None):
    """Send a non-streaming request (of `content_type`, JSON if None); its status, raw body and headers."""
    resp = await _send(session, node, path, body, stream=False, content_type=content_type)
    try:
        raw = await resp.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise RetryElsewhere(f"{node.name}: {exc}", unreachable=True) from exc
    finally:
        resp.release()
    return resp.status, raw, resp.headers


def usage_of(raw: bytes) -> dict | None:
    """The usage of a whole answer, if it has one."""
    try:
        return orjson.loads(raw).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None


async def open_upstream_stream(session, node: Node, path: str, body: bytes) -> aiohttp.ClientResponse:
    """Start the upstream stream; failures before its first byte raise `RetryElsewhere`."""
    return await _send(session, node, path, body)


class ClientGone(Exception):
    """The client closed its connection; the upstream request is dropped with it."""


async def outputs(upstream: aiohttp.ClientResponse, rec: RequestRecord):
    """The neuron's stream chunk by chunk, as both relays read it, in one pass over each chunk: the first
    chunk with output is its time to first token, and a chunk's output events are counted once the relay is
    done with it (it asks for the next). A stream cut short (its client left, its node failed) has no usage
    at its end; it is counted by these. An event is a token or more (the neuron joins the tokens a slower
    client has not taken yet), so the count is a lower bound."""
    async for chunk in upstream.content.iter_any():
        found = len(FIRST_OUTPUT.findall(chunk))
        if found and rec.first_token_at is None:
            rec.first_output()
        yield chunk
        rec.sent(found)


def mid_stream_failure(rec: RequestRecord, exc: BaseException) -> ApiError:
    rec.failed(502, "upstream_failed")
    return ApiError(502, "api_error", f"the node {rec.node} failed mid-stream ({exc.__class__.__name__}); "
                    "the answer is incomplete, retry the request", code="upstream_failed")


async def relay_stream(upstream: aiohttp.ClientResponse, client: web.StreamResponse, rec: RequestRecord) -> None:
    """Copy the upstream SSE bytes to the client chunk by chunk, noting TTFT and usage."""
    recent: collections.deque[bytes] = collections.deque()  # the last TAIL_BYTES or more, whatever the chunking
    size, end = 0, b""
    try:
        async for chunk in outputs(upstream, rec):
            await write(client, chunk)
            recent.append(chunk)
            size += len(chunk)
            while size - len(recent[0]) >= TAIL_BYTES:
                size -= len(recent.popleft())
            end = (end + chunk[-len(DONE):])[-len(DONE):]
            if end == DONE:
                # Nothing follows [DONE]. The client, which has it, may close at once, and a client that
                # leaves cancels this handler: waiting for the upstream's end of stream lost the usage.
                break
        tail = b"".join(recent)
        if not tail.rstrip().endswith(b"[DONE]"):
            raise aiohttp.ClientPayloadError("upstream stream ended without [DONE]")
        rec.finished(_usage_from_tail(tail))
    except (aiohttp.ClientError, OSError) as exc:
        await write(client, error_event(mid_stream_failure(rec, exc)) + DONE)
    finally:
        upstream.release()


async def relay_translated(upstream: aiohttp.ClientResponse, client: web.StreamResponse, rec: RequestRecord,
                           translator: Translator, progress_after: float) -> None:
    """Read the upstream SSE stream back into chunks and send the client what `translator` makes of them:
    keep-alives (a long prefill) in the dialect's form, the end at [DONE], an error event on a failure."""
    reader = SSEReader()
    if not translator.started:  # a long cold load may have started it, without the prompt's size
        await write(client, translator.start(rec.prompt_tokens))
    try:
        async for chunk in outputs(upstream, rec):
            for data in reader.feed(chunk):
                if data.startswith(b":"):  # a comment: keep-alives are passed on; usage comes as a chunk too
                    if is_keepalive(data):
                        await write(client, translator.keepalive(progress_after))
                    continue
                if data == b"[DONE]":
                    rec.finished(translator.usage)
                    await write(client, translator.finish())
                    return
                event = orjson.loads(data)
                if "error" in event:  # the neuron failed mid-stream and said so
                    err = error_from_envelope(502, data)
                    rec.failed(502, err.type)
                    await write(client, translator.fail(err))
                    return
                await write(client, translator.feed(event))
        raise aiohttp.ClientPayloadError("upstream stream ended without [DONE]")
    except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
        await write(client, translator.fail(mid_stream_failure(rec, exc)))
    finally:
        upstream.release()


async def write(client: web.StreamResponse, data: bytes) -> None:
    try:
        await client.write(data)
    except (ConnectionResetError, ConnectionError) as exc:
        raise ClientGone() from exc


def _usage_from_tail(tail: bytes) -> dict | None:
    """The neuron's usage comment (sent on every stream), else a usage chunk (another OpenAI server)."""
    at = tail.rfind(USAGE_COMMENT)
    if at >= 0:
        end = tail.find(b"\n", at)
        try:
            return orjson.loads(tail[at + len(USAGE_COMMENT):end if end > 0 else None])
        except orjson.JSONDecodeError:
            return None
    at = tail.rfind(_USAGE)
    if at < 0:
        return None
    start = tail.rfind(b"data: ", 0, at)
    end = tail.find(b"\n", at)
    try:
        return orjson.loads(tail[start + 6:end if end > 0 else None]).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None


async def open_client_stream(request: web.Request) -> web.StreamResponse:
    """The client's SSE stream: a client that stops reading loses it after [gateway] write_timeout_s,
    and with it the upstream request (and the node's slot)."""
    return await open_stream(request)
