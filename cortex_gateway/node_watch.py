"""Each node's health stream followed (neuron.shared.health_stream): changes learned as they happen.

Polling a thousand idle nodes every interval costs the gateway most of its idle CPU, spent on answers that
say nothing changed. A watched node pushes its health when it changes and a heartbeat every interval
otherwise, and the poller skips it (`Node.watched`); a heartbeat is one small read, not an HTTP exchange.
Polls stay in charge wherever a stream is not open: a node older than the stream (404), one that cannot be
reached, the time between a broken stream and the next one. So a node is marked down as before, by the
poller's failed polls; a stream that breaks counts as one failure, being news the poll has not seen yet.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cortex_gateway.fleet import Fleet, Node
from neuron.shared.client import NeuronError
from neuron.shared.health_stream import MAX_HEARTBEAT_S, MIN_HEARTBEAT_S

log = logging.getLogger("cortex.gateway.node_watch")
UNSUPPORTED_RETRY_S = 300.0  # a node without the stream is asked again this seldom (it may be upgraded)


class NodeWatch:
    """One stream per node, reopened after it ends; `heartbeat_s` is the gateway's poll interval, so a
    silent node is noticed as soon as a missed poll would have noticed it."""

    def __init__(self, fleet: Fleet, heartbeat_s: float):
        self.fleet = fleet
        self.heartbeat_s = min(max(heartbeat_s, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)

    async def run(self) -> None:
        await asyncio.gather(*(self.watch(node) for node in self.fleet.nodes.values()))

    async def watch(self, node: Node) -> None:
        """Until cancelled: follow the node's stream whenever it opens; the poller polls it meanwhile."""
        while True:
            pause = self.heartbeat_s
            try:
                await self._follow(node)
                self._ended(node, "its health stream ended (the node is stopping)")
            except NeuronError as err:
                if err.status in (404, 405):
                    log.info("node %s has no health stream (older neuron): polled every interval", node.name)
                    pause = UNSUPPORTED_RETRY_S
                else:
                    self._ended(node, err.message)
                    if err.status:  # the node refused the stream itself: say why, once a pause
                        log.warning("node %s refused its health stream: %s", node.name, err.message)
            finally:
                node.watched = False
            await asyncio.sleep(pause)  # not a retry storm at a node that is down; the poller polls it

    async def _follow(self, node: Node) -> None:
        heard, last = time.monotonic(), None
        async for health in node.client.watch_health(self.heartbeat_s, self.fleet.poll_timeout):
            now = time.monotonic()
            if health is None:  # a heartbeat: nothing changed, only the uptime moved on
                node.health.uptime_s = round(node.health.uptime_s + now - heard, 3)
                if last is not None:
                    await self.fleet.recheck(node, last)
            else:
                await self.fleet.take_health(node, last := health)
            if node.watched != (node.failures == 0):
                node.watched = node.failures == 0  # a stream whose /models could not be read leaves it to polls
                log.debug("node %s %s", node.name, "watched" if node.watched else "polled")
            heard = now

    def _ended(self, node: Node, reason: str) -> None:
        """A stream that was open ended: one failure (the node stopped, or went silent past two heartbeats);
        one that never opened leaves the counting to the poller."""
        if node.watched:
            self.fleet.mark_failed(node, reason)
