"""Who an inference request is for, read from the headers the gateway sends (`X-Cortex-Priority`,
`X-Cortex-Tenant`); the waiting queue orders by it (`neuron.engine.queue_order`).

Both headers are optional: a request straight to the neuron, or through a gateway without keys, is
normal priority for the one anonymous tenant. A priority the neuron does not know is refused rather than
guessed at, so a typo in a gateway's configuration shows at once.
"""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

from neuron.engine.queue_order import ANONYMOUS, NORMAL, RANKS, Caller
from neuron.shared.errors import bad_request
from neuron.shared.protocol import PRIORITIES, PRIORITY_HEADER, TENANT_HEADER

MAX_TENANT_CHARS = 256


def caller_of(request: web.Request) -> Caller:
    """The request's priority and tenant; a 400 naming the header for a value it cannot be."""
    return Caller(_priority(request.headers.get(PRIORITY_HEADER)), _tenant(request.headers.get(TENANT_HEADER)))


def _priority(value: str | None) -> int:
    if value is None:
        return NORMAL
    rank = RANKS.get(value.strip().lower())
    if rank is None:
        raise bad_request(f"{PRIORITY_HEADER}: expected one of {', '.join(PRIORITIES)}, got {value[:64]!r}")
    return rank


def _tenant(value: str | None) -> str:
    if value is None:
        return ANONYMOUS
    tenant = unquote(value)  # the gateway percent-encodes a key's name: any name fits in a header
    if len(tenant) > MAX_TENANT_CHARS:
        raise bad_request(f"{TENANT_HEADER}: at most {MAX_TENANT_CHARS} characters, got {len(tenant)}")
    return tenant
