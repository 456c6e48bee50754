"""Async client of the neuron's lifecycle API, used by the gateway and the CLI.

It raises `NeuronError` carrying the neuron's own error fields, so callers can
act on the code (`insufficient_memory`, `model_not_found`) without parsing text.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from neuron.errors import error_from_envelope


class NeuronError(Exception):
    """The neuron answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, message: str, type: str = "server_error"):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type

    @property
    def unreachable(self) -> bool:
        return self.status == 0


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
                method, self.endpoint + path, data=data, headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    err = error_from_envelope(resp.status, raw)
                    raise NeuronError(resp.status, err.code or "upstream_error",
                                      err.message or raw[:200].decode(errors="replace"), err.type)
                return _parse(raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise NeuronError(0, "node_unreachable", f"{self.endpoint}: {exc.__class__.__name__} {exc}") from exc

    async def health(self, timeout: float = 5.0) -> dict:
        return await self._call("GET", "/health", timeout=timeout)

    async def models(self, timeout: float = 5.0) -> list[dict]:
        return (await self._call("GET", "/models", timeout=timeout))["models"]

    async def available(self, timeout: float = 5.0) -> list[dict]:
        return (await self._call("GET", "/models/available", timeout=timeout))["models"]

    async def load(self, spec: dict, timeout: float = 600.0) -> dict:
        return await self._call("POST", "/models/load", spec, timeout=timeout)

    async def unload(self, model: str, timeout: float = 120.0) -> dict:
        return await self._call("POST", "/models/unload", {"model": model}, timeout=timeout)


def _parse(raw: bytes) -> dict:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
