"""A key's tokens, metered: reserved at admission, settled when the request ends (docs/budgets.md).

`dispatch` calls `admit` at the top of `_attempts` (and once more after placing a request for a model no
node had loaded, whose context only then is known), `billed_at_usage` over a stream it relays (billed
as the neuron's usage arrives, before the end reaches the client), and `settle` when the request ends,
however it ends (a no-op for a stream already billed). Between admission and billing, the request holds
its worst case (`cortex_gateway.budgets`) in the state database, against the key's budget for the
current window and in the key's tokens-per-minute bucket there (`cortex_gateway.tpm`). Every request of a
known key is metered, with or without a budget, so usage per key and model is there for `cortex usage`;
a gateway without keys meters nothing.

The worst case is first tried without counting the prompt (the model's whole context bounds it); only
when that does not fit is the prompt counted by the node's /tokenize and the smaller bound tried, so a
key with room to spare costs no extra round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from cortex_gateway import budgets, tpm
from cortex_gateway.auth import LIMITER
from cortex_gateway.budgets import Period
from cortex_gateway.metrics import RequestRecord
from cortex_gateway.proxy import RetryElsewhere, fetch_json
from cortex_gateway.state import FLEET, METRICS, SESSION, STATE_DB, TENANT
from cortex_gateway.state_db import ApiKey, Reservation, StateError
from cortex_gateway.tpm import TpmRefusal, TpmState, anthropic_headers, openai_headers, requests_headers
from neuron.shared.audio_bound import seconds_bound
from neuron.shared.errors import ApiError
from neuron.shared.multipart import parse_form
from neuron.shared.sse import USAGE_COMMENT

log = logging.getLogger("cortex.gateway.metering")
DEFAULT_WINDOW = "month"  # the period a key without a budget has its usage counted in
CHAT_ENDPOINTS = frozenset({"chat", "messages", "responses"})  # bodies the node's /tokenize counts
UNMETERED = frozenset({"count_tokens"})  # a token count generates nothing and is not billed


@dataclass
class Meter:
    """The gateway's metering clock and settlements under way: one per app, under METER."""

    clock: Callable[[], float] = time.time  # the budget windows' time: seconds since the epoch
    billing: set = field(default_factory=set)  # settlements under way
    unreachable: bool = False  # the state database failed last: its outage is logged once, and its recovery

    def state_failed(self, exc: StateError) -> None:
        if not self.unreachable:
            log.error("the state database is unreachable: requests of budgeted keys get a 503, as do those of "
                      "keys with a TPM limit, and the usage of the others is spooled on disk until it answers "
                      "again: %s", exc)
        self.unreachable = True

    def state_answered(self) -> None:
        if self.unreachable:
            log.warning("the state database answers again: budgeted keys served and usage recorded")
        self.unreachable = False


METER = web.AppKey("meter", Meter)
RATE_HEADERS = web.RequestKey("rate_headers", dict)  # added to the request's answer, whatever it is
_METERED = web.RequestKey("metered", object)


@dataclass
class Metered:
    """One request's hold on its key's tokens, from admission to settlement."""

    key: ApiKey
    model: str
    period: Period
    window: str
    reservation: Reservation | None = None
    tpm_taken: int = 0


def setup(app: web.Application, max_key_labels: int = 100, meter: Meter | None = None) -> None:
    """Install metering in the app: its buckets, and the rate-limit headers on every answer."""
    app[METER] = meter or Meter()
    app.on_response_prepare.append(_add_rate_headers)
    if METRICS in app:
        app[METRICS].key_labels.limit = max_key_labels


async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The key's TPM headers as admission left them, and its rpm headers as of now: on every answer of a
    limited key, the 429s of either limit included."""
    headers = dict(request.get(RATE_HEADERS, {}))
    tenant = request.get(TENANT)
    if tenant is not None and tenant.settings.rpm and request.path.startswith("/v1/"):
        headers.update(_rpm_headers(request, tenant))
    for name, value in headers.items():
        response.headers[name] = value


def _rpm_headers(request: web.Request, tenant: ApiKey) -> dict[str, str]:
    """From the keys layer's rpm bucket (`auth.KeyLimiter`), refilled to now as it refills it."""
    bucket = request.app[LIMITER].buckets.get(tenant.key_hash) if LIMITER in request.app else None
    if bucket is None:
        return {}
    rpm = tenant.settings.rpm
    level = min(float(rpm), bucket.tokens + max(0.0, time.monotonic() - bucket.updated) * rpm / 60.0)
    return requests_headers(rpm, level, request.path.startswith("/v1/messages"), request.app[METER].clock())


async def admit(ex, node=None) -> ApiError | None:
    """Hold the request's worst case for its key, or the refusal to end it with (429, or 503 when the state
    database is unreachable). Nothing to do for a request already held or without a key; with no node
    yet and no loaded replica to learn the model's context from, nothing yet (called again once placed)."""
    request = ex.request
    tenant = request.get(TENANT)
    if tenant is None or _METERED in request or ex.call.endpoint in UNMETERED or METER not in request.app:
        return None
    context = _context(request.app, ex.record.model, node)
    limited = tenant.settings.budget_tokens is not None or tenant.settings.tpm
    if limited and context is None and node is None:
        return None
    metered = _metered(request.app[METER], tenant, ex.record.model)
    try:
        refusal = await _hold(ex, metered, context or 0, node) if limited else None
    except StateError as exc:
        request.app[METER].state_failed(exc)
        log.info("cannot meter a request of key %s: %s", tenant.name, exc)
        return ApiError(503, "api_error", "the gateway cannot reach its state database to meter this key's "
                        "tokens; retry shortly", code="state_unavailable", retry_after=5)
    if refusal is None:
        request[_METERED] = metered
    return refusal


def _metered(meter: Meter, tenant: ApiKey, model: str) -> Metered:
    window = window_of(tenant)
    return Metered(tenant, model, window.period(meter.clock()), window.spec)


def window_of(key: ApiKey | None) -> budgets.Window:
    """The window a key's usage is counted in: its budget's, else the month (one the budget layer cannot
    read, which the admin API never stores, counts by the month too, said in the log)."""
    spec = (key.settings.budget_window if key is not None else None) or DEFAULT_WINDOW
    try:
        return budgets.parse_window(spec)
    except ValueError:
        log.warning("key %s: budget_window %r is no window (1h, 1d, 30d, month): counted by the month",
                    key.name if key else "?", spec)
        return budgets.parse_window(DEFAULT_WINDOW)


def _context(app: web.Application, model: str, node) -> int | None:
    """The model's context where it will run (the largest among its loaded replicas before placement)."""
    nodes = [node] if node is not None else [n for n in app[FLEET].nodes.values() if n.has_loaded(model)]
    sizes = [n.models[model].context_size for n in nodes if model in n.models]
    return max(sizes) if sizes else None


async def _hold(ex, metered: Metered, context: int, node) -> ApiError | None:
    """Try the worst case without counting the prompt, then counted (when counting can lower it); only the
    last try's refusal is answered (and counted as one)."""
    body = _audio(ex.call) if ex.call.endpoint == "transcriptions" else _body(ex.call.body)
    uncounted = budgets.request_worst_case(ex.call.endpoint, body, context)
    refused = None
    if uncounted is not None:
        refused = await _reserve(ex, metered, uncounted)
        if refused is None or not _countable(ex.call.endpoint, body):
            return await _answer(ex, metered, refused)
    counted = await _count(ex, body, node)
    worst = None if counted is None else budgets.chat_worst_case(body, context, counted)
    if worst is None:
        return await _refusal(ex, metered, refused) if refused else _unbounded(ex.call.model)
    if uncounted is None or worst < uncounted:
        refused = await _reserve(ex, metered, worst)
    return await _answer(ex, metered, refused)


async def _answer(ex, metered: Metered, refused: _Refused | None) -> ApiError | None:
    return None if refused is None else await _refusal(ex, metered, refused)


def _audio(call) -> dict:
    """A transcription's form as its worst case reads it: the most seconds its file can hold."""
    try:
        form = parse_form(call.body, call.content_type)
    except ApiError:  # refused when its model was read, before this
        return {}
    part = form.part("file")
    return {} if part is None else {"audio_s": seconds_bound(form.value(part))}


def _body(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _countable(endpoint: str, body: dict) -> bool:
    """Whether counting the prompt can lower the bound: a chat body with an output limit, or several choices."""
    return endpoint in CHAT_ENDPOINTS and (budgets.output_limit(body) is not None or budgets.choices(body) > 1)


async def _count(ex, body: dict, node) -> int | None:
    """The prompt's tokens by the node's own template and tokenizer (a node with the model loaded), or None."""
    app, model = ex.request.app, ex.record.model
    if ex.call.endpoint not in CHAT_ENDPOINTS:
        return None
    if node is None:
        node = next((n for n in app[FLEET].nodes.values() if n.has_loaded(model) and n.healthy), None)
    if node is None:
        return None
    try:
        status, raw = await fetch_json(app[SESSION], node, "/tokenize", ex.call.body_for(node.upstream_id(model)))
    except (RetryElsewhere, ApiError, OSError):
        return None
    count = _body(raw).get("count") if status == 200 else None
    return count if type(count) is int and count >= 0 else None


def _unbounded(model: str) -> ApiError:
    return ApiError(400, "invalid_request_error", f"this key's tokens are limited and the context of {model!r} is "
                    "not known, so the request's worst case cannot be reserved: set max_tokens", param="max_tokens",
                    code="max_tokens_required")


@dataclass(frozen=True)
class _Refused:
    """A try that did not fit: by the key's TPM (its bucket's refusal) or its budget; `state`, the key's TPM
    after it (the headers of the refusal), if it has one."""

    tokens: int
    tpm: TpmRefusal | None = None
    state: TpmState | None = None


async def _reserve(ex, metered: Metered, tokens: int) -> _Refused | None:
    """Take `tokens` from the key's TPM bucket, then reserve them in its budget; refused, nothing is held."""
    db, settings, name = ex.request.app[STATE_DB], metered.key.settings, metered.key.name
    state = None
    if settings.tpm:
        state = await tpm.take(db, name, settings.tpm, tokens)
        if isinstance(state, TpmRefusal):
            return _Refused(tokens, state, state.state)
        metered.tpm_taken = tokens  # given back exactly once: here if the budget refuses, else at the settle
    if settings.budget_tokens is not None:
        try:
            metered.reservation = await db.reserve(name, metered.model, metered.period.label, tokens,
                                                   settings.budget_tokens)
        except BaseException:
            await _give_back(db, metered, 0)
            raise
        if metered.reservation is None:
            return _Refused(tokens, None, await _give_back(db, metered, 0))
    if state is not None:
        _set_headers(ex.request, state, ex.request.app[METER])
    return None


async def _refusal(ex, metered: Metered, refused: _Refused) -> ApiError:
    """The 429 to answer: TPM's rate_limit_error, or the spent budget's insufficient_quota; counted per key."""
    app, settings, name = ex.request.app, metered.key.settings, metered.key.name
    meter = app[METER]
    if refused.state is not None:
        _set_headers(ex.request, refused.state, meter)
    if refused.tpm is not None:
        err = ApiError(429, "rate_limit_error", refused.tpm.message(), code="rate_limit_tokens",
                       retry_after=refused.tpm.retry_after or 60)
        return _refuse(app, name, "tpm", err)
    used = await app[STATE_DB].budget_used(name, metered.period.label)
    message = budgets.budget_refusal(used, refused.tokens, settings.budget_tokens, metered.window, metered.period)
    # OpenAI's type and code for a spent quota; the Anthropic envelope renders any 429 as its rate_limit_error.
    err = ApiError(429, "insufficient_quota", message, code="insufficient_quota",
                   retry_after=metered.period.retry_after(meter.clock()))
    return _refuse(app, name, "budget", err)


async def _give_back(db, metered: Metered, used: int) -> TpmState | None:
    """What the request took of its key's TPM and did not use goes back, once (tpm_taken is then 0)."""
    taken, metered.tpm_taken = metered.tpm_taken, 0
    return await tpm.give_back(db, metered.key.name, metered.key.settings.tpm, taken, used) if taken else None


def _set_headers(request: web.Request, state: TpmState, meter: Meter) -> None:
    """The TPM headers in the dialect of the route: Anthropic's on /v1/messages, OpenAI's elsewhere."""
    if request.path.startswith("/v1/messages"):
        request[RATE_HEADERS] = anthropic_headers(state, meter.clock())
    else:
        request[RATE_HEADERS] = openai_headers(state)


def _refuse(app: web.Application, key: str, reason: str, err: ApiError) -> ApiError:
    if METRICS in app:
        app[METRICS].observe_key_refusal(key, reason)
    return err


async def settle(request: web.Request, rec: RequestRecord) -> None:
    """Bill what the request used, as the gateway saw it (`RequestRecord`: the answer's usage; for a stream
    cut short, its prompt and the outputs relayed), and give the rest of its hold back. Committed before it
    returns; once (the reservation is gone after: a stream billed at its usage, `billed_at_usage`, is done).
    A request that reached no node and held nothing (a model that does not exist, one with no room) is no
    usage: counting it would let a key write any name it likes into the usage table."""
    metered = request.get(_METERED)
    if metered is not None and not rec.node and _held_nothing(metered, rec):
        del request[_METERED]
        return
    await _settle(request, rec.prompt_tokens, rec.completion_tokens)


def _held_nothing(metered: Metered, rec: RequestRecord) -> bool:
    return metered.reservation is None and not metered.tpm_taken and not rec.prompt_tokens + rec.completion_tokens


async def _settle(request: web.Request, prompt: int, completion: int) -> None:
    """A client that leaves meanwhile (aiohttp cancels its handler, even after a stream's last event) does
    not stop the billing: it runs on in a task of its own, held until it has committed."""
    metered = request.pop(_METERED, None)
    if metered is None:
        return
    billing = asyncio.ensure_future(_bill(request.app, metered, max(0, prompt), max(0, completion)))
    meter = request.app[METER]
    meter.billing.add(billing)  # held, so a task whose handler is gone is not collected before it commits
    billing.add_done_callback(meter.billing.discard)
    await asyncio.shield(billing)


async def _bill(app: web.Application, metered: Metered, prompt: int, completion: int) -> None:
    await _give_back(app[STATE_DB], metered, prompt + completion)
    held, db = metered.reservation, app[STATE_DB]
    if held is not None and prompt + completion > held.tokens:
        log.warning("key %s: a request used %d tokens, more than the %d reserved for it", metered.key.name,
                    prompt + completion, held.tokens)
    try:
        if held is None:  # a key without a budget: nothing was held (either way: spooled if the database is down)
            outage = await db.record_usage(metered.key.name, metered.model, metered.period.label, prompt, completion)
        else:
            outage = await db.settle_or_spool(held, prompt, completion)
    except StateError as exc:
        app[METER].state_failed(exc)
        log.info("usage of key %s not recorded (%d + %d tokens): %s", metered.key.name, prompt, completion, exc)
        return
    if outage is not None:
        app[METER].state_failed(outage)  # the usage is in the spool, billed from there once the database answers
    else:
        app[METER].state_answered()
    if METRICS in app:
        app[METRICS].observe_key_tokens(metered.key.name, prompt, completion)


def billed_at_usage(request: web.Request, upstream):
    """The neuron's stream, read so that a metered request is billed as soon as its usage comes (the
    neuron's usage comment, sent before the usage chunk and `[DONE]`), before the relay passes those
    bytes on: a client that has the whole answer has been billed for it. Others: the stream as it is."""
    if request.get(_METERED) is None:
        return upstream
    return _Watched(upstream, _UsageWatch(upstream.content, request))


class _Watched:
    """The upstream response with its content read through a `_UsageWatch`; the rest is the response's."""

    def __init__(self, upstream, content):
        self._upstream, self.content = upstream, content

    def __getattr__(self, name: str):
        return getattr(self._upstream, name)


class _UsageWatch:
    def __init__(self, content, request: web.Request):
        self._content, self._request = content, request

    async def iter_any(self):
        tail, billed = b"", False
        async for chunk in self._content.iter_any():
            if not billed:
                tail = (tail + chunk)[-_TAIL_BYTES:]
                if (usage := usage_comment(tail)) is not None:
                    billed = True
                    await _settle(self._request, int(usage.get("prompt_tokens") or 0),
                                  int(usage.get("completion_tokens") or 0))
            yield chunk


_TAIL_BYTES = 8192  # more than a usage comment, whatever the chunking


def usage_comment(tail: bytes) -> dict | None:
    """The usage of the neuron's whole usage comment in `tail`, or None (none yet, or not yet whole)."""
    at = tail.rfind(USAGE_COMMENT)
    end = tail.find(b"\n", at) if at >= 0 else -1
    if end < 0:
        return None
    try:
        usage = orjson.loads(tail[at + len(USAGE_COMMENT):end])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None
