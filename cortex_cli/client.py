"""The CLI's client of the gateway's admin API (async: `cortex top` shares it with the commands)."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson

DEFAULT_GATEWAY = "http://127.0.0.1:31313"


class GatewayUnreachable(Exception):
    """No answer from the gateway at all."""


class AdminError(Exception):
    """The gateway answered with an error; `message` is its own words."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def gateway_url(given: str | None = None) -> str:
    return (given or os.environ.get("CORTEX_GATEWAY") or DEFAULT_GATEWAY).rstrip("/")


def admin_key(given: str | None = None) -> str | None:
    return given or os.environ.get("CORTEX_ADMIN_KEY") or None


class AdminClient:
    def __init__(self, url: str, key: str | None = None, session: aiohttp.ClientSession | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session = session

    async def __aenter__(self) -> AdminClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owned = True
        return self

    async def __aexit__(self, *exc) -> None:
        if getattr(self, "_owned", False):
            await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        try:
            async with self._session.request(
                method, self.url + path, data=None if body is None else orjson.dumps(body),
                headers={**self.headers, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GatewayUnreachable(f"cannot reach the gateway at {self.url} ({exc.__class__.__name__}); "
                                     "is `cortex serve` running? (--gateway or CORTEX_GATEWAY)") from exc
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {}
        if resp.status >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            err = err if isinstance(err, dict) else {}
            raise AdminError(resp.status, err.get("code"), err.get("message") or f"HTTP {resp.status}")
        return data

    async def status(self, refresh: bool = False, timeout: float = 10.0) -> dict:
        return await self._call("GET", "/admin/status" + ("?refresh=1" if refresh else ""), timeout=timeout)

    async def models(self, timeout: float = 10.0) -> list[dict]:
        return (await self._call("GET", "/v1/models", timeout=timeout))["data"]

    async def load(self, node: str, model: str, *, pin: bool = False, devices: list | None = None,
                   backend: str | None = None, timeout: float = 3600) -> dict:
        body: dict[str, Any] = {"node": node, "model": model, "pin": pin}
        if devices:
            body["devices"] = devices
        if backend:
            body["backend"] = backend
        return await self._call("POST", "/admin/load", body, timeout=timeout)

    async def unload(self, node: str, model: str) -> dict:
        return await self._call("POST", "/admin/unload", {"node": node, "model": model}, timeout=300)

    async def pin(self, node: str, model: str, pinned: bool = True) -> dict:
        return await self._call("POST", "/admin/pin" if pinned else "/admin/unpin", {"node": node, "model": model})
