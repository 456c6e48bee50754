"""Request ids that join the gateway's log lines to the neuron's, and the log formats of both servers.

Every request gets an id: the client's `X-Request-ID` when it sends a sane one,
else a new one. It is kept in a context variable for the request's task (and
the tasks it starts), so every log line about the request carries it without
being passed around; it is returned in the response headers of every dialect,
and the gateway sends it on to the neuron, which logs under the same id.

`--log-format json` writes one JSON object per line (time, level, logger,
message, request_id, and what a line adds: model, node, status, durations).

Log lines carry what clients send (paths, model names) and what operators wrote (key names in a
keys file), so both formats escape every character that could end a line or drive the terminal
of whoever tails the log: one record is always one line, and an ESC is the text `\\x1b`, not the start
of a terminal command.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid

import orjson
from aiohttp import web

HEADER = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")  # no spaces, quotes or control characters: safe to log
# C0 controls (newline, ESC), DEL and C1 (NEL, CSI), what Unicode treats as line and paragraph
# separators, and the bidirectional marks, overrides and isolates that reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")  # orjson escapes C0
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_request: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar("request", default=None)
REQUEST_ID = web.RequestKey("request_id", str)


def escaped(text: str) -> str:
    """`text` with each unsafe character written as an escape (`\\x1b`, `\\u2028`): it can neither start a
    line nor move a cursor, and a name that holds one reads differently from one that does not."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Outermost: the id exists before anything can log or fail."""
    given = request.headers.get(HEADER, "")
    rid = given if _SANE.match(given) else new_request_id()
    request[REQUEST_ID] = rid
    token, request_token = _current.set(rid), _request.set(request)
    try:
        return await handler(request)
    finally:
        _current.reset(token)
        _request.reset(request_token)


def current_request() -> web.Request | None:
    """The request being handled, for code its handler calls without passing it (the gateway's upstream
    headers read the key's name and priority the middlewares after this one put on it)."""
    return _request.get()


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer carries its id, streams and error envelopes included."""
    rid = request.get(REQUEST_ID)
    if rid and HEADER not in response.headers:
        response.headers[HEADER] = rid


def with_request_id(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the current request's id, for a call made on its behalf (the gateway to a neuron)."""
    rid = _current.get()
    return {**headers, HEADER: rid} if rid else headers


def install(app: web.Application) -> None:
    app.on_response_prepare.append(add_request_id_header)


# -- log records ----------------------------------------------------------------------------
_FIELDS = ("model", "node", "status", "method", "path", "prompt_tokens", "completion_tokens", "ttft_s",
           "duration_s", "key", "endpoint", "error", "priority", "tenant")


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = _current.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """The default: human-readable, with the request id when there is one; one record, one line (a
    traceback's own lines excepted, each of them escaped)."""

    def __init__(self, with_time: bool = True):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if with_time else "%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escaped(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return "\n".join(escaped(line) for line in super().formatException(ei).split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "-")
        return line if rid == "-" else f"{line} [{rid}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
               "request_id": None if getattr(record, "request_id", "-") == "-" else record.request_id}
        for name in _FIELDS:
            if (value := getattr(record, name, None)) is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # orjson escapes C0 but writes DEL, C1 and U+2028 as they are: valid JSON, yet a line break
        # to many readers (Python's splitlines, some terminals). As \\u escapes the values are the same.
        return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", orjson.dumps(out, default=str).decode())


CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first


def access_log(logger: logging.Logger, details, quiet_paths: tuple[str, ...], on_end=None):
    """A middleware writing one line per request when it ends: method, path, status, duration, and what
    `details(request)` adds (model, node, tokens, time to first token, key name). Never a body or a key.

    A successful GET of `quiet_paths` (the polls of the gateway, Prometheus and `cortex top`, several a
    second for as long as the fleet runs) is logged at debug level: at info they would bury the requests.

    Inside the error middleware's answer (so refusals are logged with their status), outside nothing that
    could fail without a line. `on_end(request, status, seconds, details)`, if given, is told each request as
    it is logged (the gateway keeps its last ones for the console)."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client left before the answer ended: not a server error
            raise
        finally:
            seconds, extra = time.perf_counter() - started, details(request)
            _log_access(logger, request, status, seconds, extra, quiet_paths)
            if on_end is not None:
                on_end(request, status, seconds, extra)

    return middleware


def _log_access(logger, request, status: int, seconds: float, extra: dict, quiet_paths) -> None:
    routine = request.method in ("GET", "HEAD") and request.path in quiet_paths and status < 400
    level = logging.DEBUG if routine else logging.INFO
    if not logger.isEnabledFor(level):
        return
    # The path as the client sent it, still percent-encoded (as nginx logs it): `%0a` stays three characters
    # and a `%20` cannot shift the fields after it.
    fields = {"method": request.method, "path": request.rel_url.raw_path, "status": status,
              "duration_s": round(seconds, 4), **{k: v for k, v in extra.items() if v is not None}}
    words = " ".join(f"{k}={_word(v)}" for k, v in fields.items() if k not in ("method", "path", "status"))
    logger.log(level, "%s %s %d %s", request.method, fields["path"], status, words, extra=fields)


def _word(value) -> str:
    """A field's value in the text line, quoted when it holds a space, a quote or `=` (a model name may):
    `model="a b"`, so no value can pass for another field."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
