"""The neurons behind the gateway and what each reported last, kept fresh by a poller.

A node that fails `down_after` polls in a row is marked down; it is up again
on its first good answer. The gateway also counts its own in-flight requests
and last use per (node, model): those are exact, while polled figures lag by
up to a poll interval, so nothing that must be right (eviction) decides on them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from cortex_gateway.config import NeuronSpec
from neuron.shared.client import NeuronClient, NeuronError, Polled
from neuron.shared.protocol import AvailableModel, Health, ModelInfo, ModelState, PullState

log = logging.getLogger("cortex.gateway.fleet")
POLL_SLICE = 50  # nodes polled together; a larger fleet's polls are spread over the interval in slices
_LISTINGS = frozenset({"models", "available"})  # what the model -> nodes index and the catalog are built from


@dataclass
class Node:
    name: str
    endpoint: str
    client: NeuronClient
    healthy: bool = False
    failures: int = 0
    health: Health = field(default_factory=Health)
    models: dict[str, ModelInfo] = field(default_factory=dict)  # loaded (any state), by id
    available: dict[str, AvailableModel] = field(default_factory=dict)  # in its models dir, by id
    pulls: list[PullState] = field(default_factory=list)  # from the hub, running or lately ended
    # The gateway's name -> the node's id, for models a profile loads by path or hub source (the node names
    # them after their file); kept across polls, which list the node's ids only.
    aliases: dict[str, str] = field(default_factory=dict)
    draining: bool = False  # `cortex drain`: no new placements; what runs there finishes
    watched: bool = False  # its health stream is open (`cortex_gateway.node_watch`): the poller skips it
    # Told when `models` or `available` is replaced (the fleet's index and catalog version follow), by
    # whoever replaces it: a poll, a test. A change in place (a load's) is followed by `Fleet.poll_node`.
    on_listing: Callable[[Node], None] | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name in _LISTINGS and (hook := self.__dict__.get("on_listing")) is not None:
            hook(self)

    @property
    def accepting(self) -> bool:
        """Healthy and not draining: requests and cold loads may be placed here."""
        return self.healthy and not self.draining
    last_error: str = ""

    def has_loaded(self, model: str) -> bool:
        info = self.models.get(model)
        return info is not None and info.status == ModelState.LOADED

    def upstream_id(self, model: str) -> str:
        """The id the node knows `model` by (a model loaded by path is listed under the gateway's name too)."""
        info = self.models.get(model)
        return info.id if info is not None else model

    def polled_load(self, model: str) -> int:
        """In flight plus queued on the node for this model at the last poll: a hint, seconds old."""
        load = self.health.load_of(model)
        return load.in_flight + load.queue_depth if load else 0


@dataclass
class Usage:
    """The gateway's own, exact count for one (node, model)."""

    in_flight: int = 0
    last_used: float = 0.0
    above_low: int = 0  # of those in flight, the ones not of low priority (a key's): a claim prefers 0 here


class Fleet:
    def __init__(self, specs: list[NeuronSpec], session: aiohttp.ClientSession, *, down_after: int = 3,
                 poll_timeout: float = 5.0):
        self.nodes = {s.name: Node(s.name, s.endpoint, NeuronClient(s.endpoint, session, s.token)) for s in specs}
        self.down_after = down_after
        self.poll_timeout = poll_timeout
        self.usage: dict[tuple[str, str], Usage] = collections.defaultdict(Usage)
        self.events: collections.deque[dict] = collections.deque(maxlen=200)
        self.on_event: Callable[[dict], None] = lambda event: None  # each event, after it is kept (shared_events)
        self.on_polled: Callable[[Node], None] = lambda node: None  # after each good poll (the lifecycle learns)
        # Raised whenever a node's models or listing changed: what the catalog (/v1/models) is cached by.
        self.catalog_version = 0
        self.loaded_index: dict[str, set[str]] = {}  # model -> names of the nodes it is loaded on
        self._indexed: dict[str, frozenset[str]] = {}  # node -> the models `loaded_index` has it under
        for node in self.nodes.values():
            node.on_listing = self.reindex

    def event(self, kind: str, **details) -> None:
        self.events.append({"time": time.time(), "kind": kind, **details})
        self.on_event(self.events[-1])
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in details.items()))

    def healthy_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.healthy]

    def usage_of(self, node: str, model: str) -> Usage:
        return self.usage[(node, model)]

    def in_flight_on(self, node: str) -> int:
        return sum(u.in_flight for (n, _), u in self.usage.items() if n == node)

    async def poll_node(self, node: Node) -> None:
        """Poll `node` now, after the gateway changed what it holds of it (a load, an unload): routing and
        the catalog see the change at once, and the node's answer confirms or corrects it."""
        self.reindex(node)
        await self._poll(node)

    async def _poll(self, node: Node) -> None:
        """One poll: only what the node says changed (its ETags) is asked for, parsed and re-indexed."""
        try:
            health, models, available = await self._fetch(node)
        except NeuronError as err:
            self.mark_failed(node, err.message)
            return
        self._learn(node, health.value, models, available)

    async def take_health(self, node: Node, health: Health) -> None:
        """A health answer the node pushed (its stream, `cortex_gateway.node_watch`): learned as a poll's
        /health would be, with /models and /models/available asked for only if their ETags moved."""
        try:
            models, available = await self._listings(node, health)
        except NeuronError as err:
            self.mark_failed(node, err.message)
            return
        self._learn(node, health, models, available)

    async def recheck(self, node: Node, health: Health) -> None:
        """The listings `health` names, asked for (conditionally) if the gateway holds others: a poll of its
        own (after a load) may have moved past the stream's last event, and the node may since have moved
        back to what that event said, which its stream then has no reason to send again. `health`'s ETags
        become the ones now held."""
        held = node.client.held
        if all(etag and (h := held.get(path)) and h.etag == etag
               for path, etag in (("/models", health.models_etag), ("/models/available", health.available_etag))):
            return
        try:
            models, available = await self._listings(node, health)
        except NeuronError as err:
            self.mark_failed(node, err.message)
            return
        self._learn(node, node.health, models, available)
        health.models_etag = held["/models"].etag if "/models" in held else ""
        health.available_etag = held["/models/available"].etag if "/models/available" in held else ""

    async def _listings(self, node: Node, health: Health) -> tuple[Polled, Polled]:
        client, t = node.client, self.poll_timeout
        models = await _if_stale(client, "/models", health.models_etag, client.poll_models, t)
        available = await _if_stale(client, "/models/available", health.available_etag, client.poll_available, t)
        return models, available

    def _learn(self, node: Node, health: Health, models: Polled, available: Polled) -> None:
        node.health = health
        if models.changed:
            listed, node.pulls = models.value
            node.models = {m.id: m for m in listed}
        if available.changed:
            node.available = {m.id: m for m in available.value}
        if _apply_aliases(node):  # replacing `models` or `available` above re-indexed already
            self.reindex(node)
        node.failures = 0
        self.on_polled(node)
        if not node.healthy:
            node.healthy = True
            self.event("node_up", node=node.name)

    async def _fetch(self, node: Node) -> tuple[Polled, Polled, Polled]:
        """/health first, then /models and /models/available only if the ETags it names differ from the ones
        held. A first poll, or a node older than ETags, asks for all three at once."""
        client, t = node.client, self.poll_timeout
        if "/health" not in client.held:
            return await asyncio.gather(client.poll_health(t), client.poll_models(t), client.poll_available(t))
        health = await client.poll_health(t)
        return (health, *await self._listings(node, health.value))

    def reindex(self, node: Node) -> None:
        """Node `node`'s models or listing changed: the model -> nodes index and the catalog version follow."""
        self.catalog_version += 1
        now = frozenset(m for m in node.models if node.has_loaded(m))
        before = self._indexed.get(node.name, frozenset())
        for model in before - now:
            names = self.loaded_index.get(model)
            if names is not None:
                names.discard(node.name)
                if not names:
                    del self.loaded_index[model]
        for model in now - before:
            self.loaded_index.setdefault(model, set()).add(node.name)
        self._indexed[node.name] = now

    def nodes_with(self, model: str) -> list[Node]:
        """The nodes whose last poll (or the gateway's own load) listed `model` as loaded; a superset at worst
        (a model unloaded since is dropped at the next poll), so callers still check `has_loaded`."""
        names = self.loaded_index.get(model)
        return [self.nodes[n] for n in names] if names else []

    def mark_failed(self, node: Node, message: str) -> None:
        """A poll or a request could not reach the node; `down_after` in a row mark it down."""
        node.failures += 1
        node.last_error = message
        if node.healthy and node.failures >= self.down_after:
            node.healthy = False
            self.event("node_down", node=node.name, reason=message)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self._poll(n) for n in self.nodes.values()))

    async def run_poller(self, interval: float) -> None:
        """Poll every node every `interval` seconds; the app polls once before serving, so this waits first.

        A large fleet is polled in slices of POLL_SLICE nodes spread over the interval, not all at once: a
        thousand polls together hold the event loop in one burst (requests wait behind it) and cost a little
        more CPU each than fifty at a time (16.9 against 15.8% of a core at 1,000 nodes); a node is still
        polled once an interval."""
        while True:
            nodes = list(self.nodes.values())
            slices = [nodes[i:i + POLL_SLICE] for i in range(0, len(nodes), POLL_SLICE)] or [[]]
            for part in slices:
                await every_once(interval / len(slices), lambda part=part: self._poll_some(part), "poll")

    async def _poll_some(self, nodes: list[Node]) -> None:
        """Poll the nodes of one slice that are not watched: a watched node tells of its changes itself."""
        await asyncio.gather(*(self._poll(n) for n in nodes if not n.watched))


def _apply_aliases(node: Node) -> bool:
    """List the models a profile loaded by path or source under the gateway's name too; True if one was new."""
    added = False
    for name, node_id in node.aliases.items():
        info = node.models.get(node_id)
        if info is not None and node.models.get(name) is not info:
            node.models[name] = info
            added = True
    return added


async def _if_stale(client: NeuronClient, path: str, etag: str, poll, timeout: float) -> Polled:
    """Ask for `path` (conditionally) unless the answer held carries `etag`, as /health says it does now."""
    held = client.held.get(path)
    if etag and held is not None and held.etag == etag:
        return Polled(held.value, False)
    return await poll(timeout)


async def every(interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """`step` every `interval` seconds, first after one interval, until cancelled: the gateway's background
    rounds (polls, keep-alive). One that fails is logged and the next one runs: they must outlive any bad answer."""
    while True:
        await every_once(interval, step, what)


async def every_once(interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """One round of `every`: wait `interval`, run `step`, log (and survive) its failure."""
    await asyncio.sleep(interval)
    try:
        await step()
    except Exception:  # noqa: BLE001
        log.exception("%s failed", what)
