"""Async client of the neuron's lifecycle API, used by the gateway and the CLI.

Answers come back as the node protocol's types (`neuron.shared.protocol`). Failures
raise `NeuronError`, an `ApiError` carrying the neuron's own fields, so callers
act on the code (`insufficient_memory`, `model_busy`) without parsing text and
can re-raise it to their own clients as it is.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

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


class NeuronClient:
    def __init__(self, endpoint: str, session: aiohttp.ClientSession, token: str | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.json_headers = {"Content-Type": "application/json", **self.headers}  # built once, sent per request

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

    async def health(self, timeout: float = 5.0) -> Health:
        return Health.from_dict(await self._call("GET", "/health", timeout=timeout))

    async def models(self, timeout: float = 5.0) -> list[ModelInfo]:
        return (await self.models_and_pulls(timeout))[0]

    async def models_and_pulls(self, timeout: float = 5.0) -> tuple[list[ModelInfo], list[PullState]]:
        """GET /models: the loaded models, and the pulls from the hub running or lately ended."""
        answer = await self._call("GET", "/models", timeout=timeout)
        return ([ModelInfo.from_dict(m) for m in answer.get("models", [])],
                [PullState.from_dict(p) for p in answer.get("pulls", []) if isinstance(p, dict) and "source" in p])

    async def pull(self, source: str, *, wait: bool = False, timeout: float = 30.0) -> PullState:
        return PullState.from_dict(await self._call("POST", "/models/pull", {"source": source, "wait": wait},
                                                    timeout=timeout))

    async def delete(self, model: str, timeout: float = 60.0) -> dict:
        return await self._call("POST", "/models/delete", {"model": model}, timeout=timeout)

    async def available(self, timeout: float = 5.0) -> list[AvailableModel]:
        answer = await self._call("GET", "/models/available", timeout=timeout)
        return [AvailableModel.from_dict(m) for m in answer.get("models", [])]

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
