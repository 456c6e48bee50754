"""The neurons behind the gateway and what each reported last, kept fresh by a poller.

A node that fails `down_after` polls in a row is marked down; it is up again
on its first good answer. The gateway also counts its own in-flight requests
and last use per (node, model): those are exact, while polled figures lag.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from cortex_gateway.config import NeuronSpec
from neuron.client import NeuronClient, NeuronError

log = logging.getLogger(__name__)


@dataclass
class Node:
    name: str
    endpoint: str
    client: NeuronClient
    healthy: bool = False
    failures: int = 0
    health: dict = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)  # loaded (any status), by id
    available: dict[str, dict] = field(default_factory=dict)  # in its models dir, by id
    last_error: str = ""
    polled_at: float = 0.0

    @property
    def free_mb(self) -> float:
        return sum(d.get("free_mb", 0.0) for d in self.health.get("devices", []))

    @property
    def total_mb(self) -> float:
        return sum(d.get("total_mb", 0.0) for d in self.health.get("devices", []))

    def loaded(self, model: str) -> bool:
        return self.models.get(model, {}).get("status") == "loaded"

    def queue_load(self, model: str) -> int:
        """In-flight plus queued on the node for this model, as last polled."""
        for m in self.health.get("models", []):
            if m.get("id") == model:
                return int(m.get("in_flight", 0)) + int(m.get("queue_depth", 0))
        return 0


@dataclass
class Usage:
    in_flight: int = 0
    last_used: float = 0.0


class Fleet:
    def __init__(self, specs: list[NeuronSpec], session: aiohttp.ClientSession, *, down_after: int = 3,
                 poll_timeout: float = 5.0):
        self.nodes = {s.name: Node(s.name, s.endpoint, NeuronClient(s.endpoint, session, s.token)) for s in specs}
        self.down_after = down_after
        self.poll_timeout = poll_timeout
        self.usage: dict[tuple[str, str], Usage] = collections.defaultdict(Usage)
        self.events: collections.deque[dict] = collections.deque(maxlen=200)
        self.polled = asyncio.Event()  # set after the first full poll

    def event(self, kind: str, **details) -> None:
        self.events.append({"time": time.time(), "kind": kind, **details})
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in details.items()))

    def healthy_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.healthy]

    def use(self, node: str, model: str) -> Usage:
        return self.usage[(node, model)]

    async def poll_node(self, node: Node) -> None:
        try:
            t = self.poll_timeout
            health, models, available = await asyncio.gather(
                node.client.health(t), node.client.models(t), node.client.available(t))
        except NeuronError as err:
            self.mark_failed(node, err.message)
            return
        node.health = health
        node.models = {m["id"]: m for m in models}
        node.available = {m["id"]: m for m in available}
        node.failures, node.polled_at = 0, time.monotonic()
        if not node.healthy:
            node.healthy = True
            self.event("node_up", node=node.name)

    def mark_failed(self, node: Node, message: str) -> None:
        """A poll or a request could not reach the node; `down_after` in a row mark it down."""
        node.failures += 1
        node.last_error = message
        if node.healthy and node.failures >= self.down_after:
            node.healthy = False
            self.event("node_down", node=node.name, reason=message)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll_node(n) for n in self.nodes.values()))
        self.polled.set()

    async def run_poller(self, interval: float) -> None:
        while True:
            try:
                await self.poll_all()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad answer
                log.exception("poll failed")
            await asyncio.sleep(interval)
