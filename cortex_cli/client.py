"""The CLI's client of the gateway's admin API (async: `cortex top` shares it with the commands)."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson

from neuron.shared.errors import ApiError, error_from_envelope
from neuron.shared.request_context import escaped

DEFAULT_GATEWAY = "http://127.0.0.1:31313"
# A status of a thousand nodes is a few MiB; a bigger answer is not a gateway's.
MAX_REPLY_BYTES = 16 * 2**20


class GatewayUnreachable(Exception):
    """No answer from the gateway at all."""


class AdminError(ApiError):
    """The gateway answered with an error (its own words in `message`), or with something no gateway sends."""


def printable(value: Any) -> Any:
    """Every string in a JSON value, keys too, with control characters escaped: ESC starts the sequences
    that clear a screen, write the clipboard or forge hyperlinks, so a name from the fleet must not reach
    the terminal with one. Escaped, not removed: `evil\\x1b` must not show as the name `evil`."""
    if isinstance(value, str):
        return escaped(value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def gateway_url(given: str | None = None) -> str:
    return (given or os.environ.get("CORTEX_GATEWAY") or DEFAULT_GATEWAY).rstrip("/")


def admin_key(given: str | None = None) -> str | None:
    return given or os.environ.get("CORTEX_ADMIN_KEY") or None


class AdminClient:
    """`raw=True` returns the answers' strings as the gateway sent them, for shell completion, which must
    offer real names and filters them itself; everything printed gets `printable` answers."""

    def __init__(self, url: str, key: str | None = None, session: aiohttp.ClientSession | None = None, *,
                 raw: bool = False):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session = session
        self._shown = (lambda value: value) if raw else printable

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
                raw = await self._read_bounded(resp)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GatewayUnreachable(f"cannot reach the gateway at {self.url} ({exc.__class__.__name__}); "
                                     "is `cortex serve` running? (--gateway or CORTEX_GATEWAY)") from exc
        if status >= 400:
            err = error_from_envelope(status, raw)
            raise AdminError(status, err.type, printable(err.message) or f"HTTP {status}", code=err.code)
        try:
            return self._shown(orjson.loads(raw) if raw else {})
        except orjson.JSONDecodeError:
            raise self._not_a_gateway("its answer is not JSON") from None

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise self._not_a_gateway(f"its answer is over {MAX_REPLY_BYTES >> 20} MiB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _not_a_gateway(self, why: str) -> AdminError:
        return AdminError(502, "api_error", f"{self.url} does not answer like a cortex gateway: {why}; "
                          "check --gateway (or CORTEX_GATEWAY)", code="bad_reply")

    async def status(self, refresh: bool = False, timeout: float = 10.0) -> dict:
        return await self._call("GET", "/admin/status" + ("?refresh=1" if refresh else ""), timeout=timeout)

    async def models(self, timeout: float = 10.0) -> list[dict]:
        return (await self._call("GET", "/admin/models", timeout=timeout))["data"]

    async def load(self, node: str, model: str, *, pin: bool = False, devices: list | None = None,
                   backend: str | None = None, speculative: dict | None = None, timeout: float = 3600) -> dict:
        body: dict[str, Any] = {"node": node, "model": model, "pin": pin}
        if devices:
            body["devices"] = devices
        if backend:
            body["backend"] = backend
        if speculative:
            body["speculative"] = speculative  # as a load request's (neuron.shared.speculative)
        return await self._call("POST", "/admin/load", body, timeout=timeout)

    async def unload(self, node: str, model: str) -> dict:
        return await self._call("POST", "/admin/unload", {"node": node, "model": model}, timeout=300)

    async def pull(self, source: str, node: str | None = None) -> dict:
        body = {"source": source, **({"node": node} if node else {})}
        return await self._call("POST", "/admin/pull", body, timeout=60)

    async def drain(self, node: str, draining: bool = True) -> dict:
        return await self._call("POST", "/admin/drain" if draining else "/admin/undrain", {"node": node})

    async def delete(self, node: str, model: str) -> dict:
        return await self._call("POST", "/admin/delete", {"node": node, "model": model}, timeout=120)

    async def pin(self, node: str, model: str, pinned: bool = True) -> dict:
        return await self._call("POST", "/admin/pin" if pinned else "/admin/unpin", {"node": node, "model": model})
