"""Per-model admission control: a bounded number running, a bounded queue, a bounded wait.

Beyond the limits a client gets a fast 429 or 503 with Retry-After, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from neuron.shared.config import AdmissionLimits
from neuron.shared.errors import ApiError


class Admission:
    """FIFO slots for one model."""

    def __init__(self, model: str, limits: AdmissionLimits):
        self.model = model
        self.limits = limits
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, while_waiting: Callable[[], Awaitable[None]] | None = None, every: float = 5.0):
        """Hold one in-flight slot for the duration of the block; a request that has to queue calls
        `while_waiting` every `every` seconds until its turn (a keep-alive to its client)."""
        await self._acquire(while_waiting, every)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, while_waiting=None, every: float = 5.0) -> None:
        if self.in_flight < self.limits.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.limits.max_queue_depth:
            raise ApiError(429, "rate_limit_error",
                           f"model {self.model!r} is busy: {self.in_flight} running and "
                           f"{len(self._waiters)} queued (max_queue_depth); retry shortly",
                           code="queue_full", retry_after=1)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await self._wait(waiter, while_waiting, every)
        except TimeoutError:
            self._abandon(waiter)
            raise ApiError(503, "overloaded_error",
                           f"model {self.model!r} did not free a slot within {self.limits.max_wait_s:g}s "
                           "(max_wait_s); retry later", code="queue_timeout", retry_after=2) from None
        except BaseException:
            self._abandon(waiter)
            raise

    async def _wait(self, waiter: asyncio.Future, while_waiting, every: float) -> None:
        """Until `waiter` is handed a slot; TimeoutError after max_wait_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.max_wait_s
        while True:
            left = deadline - loop.time()
            step = left if while_waiting is None else min(left, every)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), max(step, 0))
                return
            except TimeoutError:
                if while_waiting is None or step >= left:
                    raise
            await while_waiting()

    def _abandon(self, waiter: asyncio.Future) -> None:
        if waiter.done() and not waiter.cancelled():
            self._release()  # the slot was handed over as we gave up: pass it on
        elif waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.cancel()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand our slot straight to the next in line
                return
        self.in_flight -= 1
