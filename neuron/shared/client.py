"""Async client of the neuron's lifecycle API, used by the gateway and the CLI.

Answers come back as the node protocol's types (`neuron.shared.protocol`). Failures
raise `NeuronError`, an `ApiError` carrying the neuron's own fields, so callers
act on the code (`insufficient_memory`, `model_busy`) without parsing text and
can re-raise it to their own clients as it is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from neuron.shared import health_stream
from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.protocol import AvailableModel, Health, ModelInfo, PullState
from neuron.shared.request_context import with_request_id


class NeuronError(ApiError):
    """The neuron answered with an error, or could not be reached (status 0)."""

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    def for_client(self) -> ApiError:
        """The error to pass on to whoever asked us: the neuron's own, or a 502 when it was unreachable."""
        if not self.unreachable:
            return self
        return ApiError(502, "api_error", f"the node serving this model is unreachable: {self.message}",
                        code="upstream_unreachable")

    @classmethod
    def from_api_error(cls, err: ApiError) -> NeuronError:
        return cls(err.status, err.type, err.message, code=err.code or "upstream_error", param=err.param,
                   retry_after=err.retry_after, details=err.details)


@dataclass
class Held:
    """A polled answer as last parsed, with the ETag the node gave it (conditional polls)."""

    etag: str
    value: Any
    at: float  # time.monotonic() when it was last confirmed


@dataclass(frozen=True)
class Polled:
    """What a conditional poll got: the parsed answer, and whether it differs from the one held before."""

    value: Any
    changed: bool


class NeuronClient:
    def __init__(self, endpoint: str, session: aiohttp.ClientSession, token: str | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.json_headers = {"Content-Type": "application/json", **self.headers}  # built once, sent per request
        self.held: dict[str, Held] = {}  # path -> the last answer of a conditional poll that came with an ETag

    async def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> dict:
        data = None if body is None else orjson.dumps(body)
        try:
            async with self.session.request(
                method, self.endpoint + path, data=data, headers=with_request_id(self.headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise NeuronError.from_api_error(error_from_envelope(resp.status, raw))
                return _parse(raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NeuronError(0, "api_error", f"{self.endpoint}: {exc.__class__.__name__} {exc}",
                              code="node_unreachable") from exc

    async def _poll(self, path: str, parse, timeout: float) -> Polled:
        """GET `path` sending the ETag held for it: a 304 keeps the answer held (not parsed again). A node
        that sends no ETag (older than them) gets plain GETs, as before."""
        held = self.held.get(path)
        headers = with_request_id({**self.headers, "If-None-Match": held.etag} if held else self.headers)
        try:
            async with self.session.get(self.endpoint + path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.status == 304 and held is not None:
                    held.at = time.monotonic()
                    return Polled(held.value, False)
                if resp.status >= 400 or resp.status == 304:
                    raise NeuronError.from_api_error(error_from_envelope(resp.status, raw))
                etag = resp.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NeuronError(0, "api_error", f"{self.endpoint}: {exc.__class__.__name__} {exc}",
                              code="node_unreachable") from exc
        value = parse(_parse(raw))
        if etag:
            self.held[path] = Held(etag, value, time.monotonic())
        else:
            self.held.pop(path, None)
        return Polled(value, True)

    def forget(self, path: str | None = None) -> None:
        """Drop the held answer of `path` (all of them without one): the next poll asks in full."""
        if path is None:
            self.held.clear()
        else:
            self.held.pop(path, None)

    async def poll_health(self, timeout: float = 5.0) -> Polled:
        """GET /health, conditionally. A 304 leaves out only the uptime, which is advanced here by the time
        passed since the answer held was given."""
        before = self.held.get("/health")
        since = before.at if before else 0.0
        polled = await self._poll("/health", Health.from_dict, timeout)
        if not polled.changed:
            polled.value.uptime_s = round(polled.value.uptime_s + self.held["/health"].at - since, 3)
        return polled

    async def watch_health(self, heartbeat_s: float, timeout: float = 5.0) -> AsyncIterator[Health | None]:
        """GET /health/stream: the node's health now and at each change, None at each heartbeat, until the
        node ends the stream (it is stopping). Raises NeuronError when it cannot be opened (404: a node older
        than the stream) or breaks, silence past two heartbeats and `timeout` included."""
        url = f"{self.endpoint}{health_stream.PATH}?{health_stream.HEARTBEAT_PARAM}={heartbeat_s:g}"
        wait = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=2 * heartbeat_s + timeout)
        try:
            async with self.session.get(url, headers=with_request_id(self.headers), timeout=wait) as resp:
                if resp.status >= 300:
                    raise NeuronError.from_api_error(error_from_envelope(resp.status, await resp.read()))
                async for event in health_stream.read_events(resp.content):
                    yield event
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise NeuronError(0, "api_error", f"{self.endpoint}{health_stream.PATH}: {exc.__class__.__name__} {exc}",
                              code="node_unreachable") from exc

    async def poll_models(self, timeout: float = 5.0) -> Polled:
        """GET /models, conditionally: (models, pulls) as `models_and_pulls` answers them."""
        return await self._poll("/models", _models_and_pulls, timeout)

    async def poll_available(self, timeout: float = 5.0) -> Polled:
        """GET /models/available, conditionally."""
        return await self._poll("/models/available", _available, timeout)

    async def health(self, timeout: float = 5.0) -> Health:
        return Health.from_dict(await self._call("GET", "/health", timeout=timeout))

    async def models(self, timeout: float = 5.0) -> list[ModelInfo]:
        return (await self.models_and_pulls(timeout))[0]

    async def models_and_pulls(self, timeout: float = 5.0) -> tuple[list[ModelInfo], list[PullState]]:
        """GET /models: the loaded models, and the pulls from the hub running or lately ended."""
        return _models_and_pulls(await self._call("GET", "/models", timeout=timeout))

    async def pull(self, source: str, *, wait: bool = False, timeout: float = 30.0) -> PullState:
        return PullState.from_dict(await self._call("POST", "/models/pull", {"source": source, "wait": wait},
                                                    timeout=timeout))

    async def delete(self, model: str, timeout: float = 60.0) -> dict:
        return await self._call("POST", "/models/delete", {"model": model}, timeout=timeout)

    async def available(self, timeout: float = 5.0) -> list[AvailableModel]:
        return _available(await self._call("GET", "/models/available", timeout=timeout))

    async def load(self, spec: dict, timeout: float = 600.0) -> ModelInfo:
        return ModelInfo.from_dict(await self._call("POST", "/models/load", spec, timeout=timeout))

    async def unload(self, model: str, *, if_idle: bool = False, timeout: float = 120.0) -> dict:
        body = {"model": model, "if_idle": True} if if_idle else {"model": model}
        return await self._call("POST", "/models/unload", body, timeout=timeout)


def _parse(raw: bytes) -> dict:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _models_and_pulls(answer: dict) -> tuple[list[ModelInfo], list[PullState]]:
    return ([ModelInfo.from_dict(m) for m in answer.get("models", [])],
            [PullState.from_dict(p) for p in answer.get("pulls", []) if isinstance(p, dict) and "source" in p])


def _available(answer: dict) -> list[AvailableModel]:
    return [AvailableModel.from_dict(m) for m in answer.get("models", [])]
