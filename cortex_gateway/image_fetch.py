"""Fetching an http(s) image URL of a chat message, where the operator allows it (`[gateway] image_fetch`).

The gateway fetches, never the neuron: the image is forwarded as a data URL. A URL is a request the
gateway makes on a client's behalf from inside the operator's network, so it is refused unless every
address its host resolves to is public (no loopback, private, link-local, shared or reserved
address, in v4 or v6, v4-mapped and NAT64 forms included), and the connection goes to the addresses
that were checked (a pinned resolver), so a name that resolves again differently (DNS rebinding)
cannot reach another. Redirects are followed by hand, a few at most, each hop checked the same way.
The answer is bounded in bytes as it is read and in time as a whole.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from neuron.shared.errors import ApiError, bad_request
from neuron.shared.image_parts import ImageBounds, check_image, to_data_url, too_large

MAX_REDIRECTS = 3
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchSettings:
    max_bytes: int
    timeout_s: float
    bounds: ImageBounds


def is_public(address: str) -> bool:
    """Whether the gateway may connect to `address` for a client: a global unicast address only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:  # a v4 address behind NAT64: as public as the v4 one it carries
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def _refused(where: str, url: str, why: str) -> ApiError:
    return bad_request(f"{where}: the image URL {url[:200]!r} is refused: {why}", param=where, code="image_url_refused")


async def public_addresses(host: str, port: int, where: str, url: str) -> list[dict]:
    """The host's addresses as aiohttp's resolver gives them, each checked public; else a 400 naming one."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _refused(where, url, f"its host does not resolve ({exc.strerror or exc})") from None
    found = [{"hostname": host, "host": info[4][0], "port": port, "family": info[0], "proto": info[2],
              "flags": socket.AI_NUMERICHOST} for info in infos]
    for item in found:
        if not is_public(item["host"]):
            raise _refused(where, url, f"{host} resolves to {item['host']}, a private, loopback or link-local "
                                       "address, which the gateway never fetches from")
    return found


class _Pinned(AbstractResolver):
    """A resolver that answers only with addresses already checked."""

    def __init__(self, host: str, infos: list[dict]):
        self.host, self.infos = host, infos

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        if host != self.host:
            raise OSError(f"{host} was not checked")
        return self.infos

    async def close(self) -> None:
        pass


async def fetch_image(url: str, where: str, settings: FetchSettings) -> str:
    """The image at `url` as a data URL, checked as an inline one is; a clear 4xx naming `where` otherwise."""
    try:
        async with asyncio.timeout(settings.timeout_s):
            data = await _follow(url, where, settings)
    except TimeoutError:
        raise _refused(where, url, f"fetching it took over {settings.timeout_s:g} s ([gateway] "
                                   "image_fetch_timeout_s)") from None
    image = check_image(data, where, settings.bounds)
    return to_data_url(image.media_type, image.data)


async def _follow(url: str, where: str, settings: FetchSettings) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refused(where, url, "only http(s) URLs are fetched")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await public_addresses(parts.hostname, port, where, url)
        connector = aiohttp.TCPConnector(resolver=_Pinned(parts.hostname, infos), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get(url, allow_redirects=False) as resp:
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                continue
            if resp.status != 200:
                raise _refused(where, url, f"it answered HTTP {resp.status}")
            return await _read_bounded(resp, where, settings.max_bytes)
    raise _refused(where, url, f"more than {MAX_REDIRECTS} redirects")


async def _read_bounded(resp: aiohttp.ClientResponse, where: str, max_bytes: int) -> bytes:
    limit = f"{max_bytes / 2**20:g} MiB fetched ([gateway] image_fetch_max_mb)"
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise too_large(where, f"{resp.content_length / 2**20:.1f} MiB", limit)
    data = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > max_bytes:
            raise too_large(where, "more", limit)
    return bytes(data)
