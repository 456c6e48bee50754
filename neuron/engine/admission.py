"""Per-model admission control: a bounded number running, a bounded queue, a bounded wait.

Beyond the limits a client gets a fast 429 or 503 with Retry-After, never a hang. Who waits goes
next by `neuron.engine.queue_order` (priority, turns between tenants, ageing); this module holds the
futures and the slots.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from neuron.engine.queue_order import AGE_FRACTION, Caller, Rotation, Waiter, next_waiter
from neuron.shared.config import AdmissionLimits
from neuron.shared.errors import ApiError


@dataclass(eq=False)
class _Queued:
    """A waiter and the future its slot is handed over on (compared by identity)."""

    waiter: Waiter
    future: asyncio.Future


class Admission:
    """Slots for one model, handed to waiters in `queue_order`'s order."""

    def __init__(self, model: str, limits: AdmissionLimits):
        self.model = model
        self.limits = limits
        self.in_flight = 0
        # One FIFO per (tenant, priority): only their heads can be next, so a choice looks at those alone.
        self._queues: dict[tuple[str, int], collections.deque[_Queued]] = {}
        self._count = 0
        self._seq = itertools.count()
        self._rotation = Rotation()
        self._age_step_s = limits.max_wait_s * AGE_FRACTION

    @property
    def queue_depth(self) -> int:
        return self._count

    @asynccontextmanager
    async def slot(self, while_waiting: Callable[[], Awaitable[None]] | None = None, every: float = 5.0,
                   caller: Caller = Caller()):
        """Hold one in-flight slot for the duration of the block; a request that has to queue calls
        `while_waiting` every `every` seconds until its turn (a keep-alive to its client)."""
        await self._acquire(caller, while_waiting, every)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, caller: Caller, while_waiting=None, every: float = 5.0) -> None:
        if self.in_flight < self.limits.max_in_flight and not self._count:
            self.in_flight += 1
            self._rotation.served(caller.tenant, self._tenants_waiting())
            return
        if self._count >= self.limits.max_queue_depth:
            raise ApiError(429, "rate_limit_error",
                           f"model {self.model!r} is busy: {self.in_flight} running and "
                           f"{self._count} queued (max_queue_depth); retry shortly",
                           code="queue_full", retry_after=1)
        loop = asyncio.get_running_loop()
        queued = _Queued(Waiter(caller, loop.time(), next(self._seq)), loop.create_future())
        self._queues.setdefault((caller.tenant, caller.priority), collections.deque()).append(queued)
        self._count += 1
        try:
            await self._wait(queued.future, while_waiting, every)
        except TimeoutError:
            self._abandon(queued)
            raise ApiError(503, "overloaded_error",
                           f"model {self.model!r} did not free a slot within {self.limits.max_wait_s:g}s "
                           "(max_wait_s); retry later", code="queue_timeout", retry_after=2) from None
        except BaseException:
            self._abandon(queued)
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

    def _abandon(self, queued: _Queued) -> None:
        if queued.future.done() and not queued.future.cancelled():
            self._release()  # the slot was handed over as we gave up: pass it on
            return
        key = (queued.waiter.caller.tenant, queued.waiter.caller.priority)
        if queued in self._queues.get(key, ()):
            self._remove(key, queued)
            queued.future.cancel()

    def _release(self) -> None:
        while self._count:
            key = self._next_key()
            queued = self._queues[key][0]
            self._remove(key, queued)
            if not queued.future.done():
                queued.future.set_result(None)  # hand our slot straight to the one whose turn it is
                self._rotation.served(queued.waiter.caller.tenant, self._tenants_waiting())
                return
        self.in_flight -= 1

    def _next_key(self) -> tuple[str, int]:
        keys = list(self._queues)
        heads = [self._queues[k][0].waiter for k in keys]
        return keys[next_waiter(heads, asyncio.get_running_loop().time(), self._rotation, self._age_step_s)]

    def _remove(self, key: tuple[str, int], queued: _Queued) -> None:
        queue = self._queues[key]
        queue.remove(queued)
        self._count -= 1
        if not queue:
            del self._queues[key]

    def _tenants_waiting(self) -> set[str]:
        return {tenant for tenant, _ in self._queues}
