"""One thread per device, owning it for the daemon's lifetime.

CUDA contexts and llama.cpp contexts are not safe to drive from several
threads, and a long forward pass must never block the event loop. So every
load, forward pass and unload for a device runs on that device's thread, fed
through a job queue; the asyncio side awaits futures or reads a `Channel`.

A model's batch scheduler is a job that runs in slices, so two models sharing
a device interleave step by step instead of one waiting for the other. An
exception in a job fails that job only: the thread and the other devices keep
running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cortex.neuron.engine.worker")

SLICE_SECONDS = 0.02  # a sliced job (a batch scheduler) yields the device to waiting jobs after this long
_STOP = object()


class _CallJob:
    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()

    def run(self) -> bool:
        try:
            result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            self.loop.call_soon_threadsafe(_set_exception, self.future, exc)
        else:
            self.loop.call_soon_threadsafe(_set_result, self.future, result)
        return True


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Channel:
    """Items produced on the device thread, read on the event loop (`next_batch`).

    Items cross threads through a deque; the loop is woken only when it is not
    already due to wake, so a fast decoder does not pay one wake-up per token.
    The reader sets `cancelled` when it goes away; the producer checks it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: collections.deque = collections.deque()
        self.cancelled = False
        self._wake_pending = False
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def push(self, item: Any) -> None:
        with self._lock:
            self.items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.loop.call_soon_threadsafe(self._wake)

    def end(self) -> None:
        self.push(_STOP)

    def fail(self, exc: BaseException) -> None:
        self.push(_Failure(exc))

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def next_batch(self, timeout: float | None = None) -> list[Any] | None:
        """Everything produced so far (at least one item), or None on timeout.

        The end of the stream is returned as the `END` sentinel; failures are raised.
        """
        while not self.items:
            self._ready.clear()
            if self.items:
                break
            try:  # asyncio.timeout, not wait_for: that wraps the wait in a new task, once per token
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        batch = []
        while self.items:
            item = self.items.popleft()
            if isinstance(item, _Failure):
                raise item.exc
            batch.append(END if item is _STOP else item)
            if item is _STOP:
                break
        return batch


END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DeviceWorker:
    """The thread that owns one device. Calls are FIFO; batch schedulers are time-sliced."""

    def __init__(self, device_id: str):
        self.device_id = device_id
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"device-{device_id}", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the device thread and await its result."""
        job = _CallJob(fn, asyncio.get_running_loop())
        self._queue.put(job)
        return await job.future

    def submit(self, job) -> None:
        """Queue any job with a `run() -> finished` method (a batch scheduler's step loop)."""
        self._queue.put(job)

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                finished = job.run()
            except BaseException:  # noqa: BLE001 - a job must never kill the device thread
                log.exception("job failed on device %s", self.device_id)
                finished = True
            if not finished:
                self._requeue(job)

    def _requeue(self, job) -> None:
        # Keep running the job while nothing else waits: no queue round trip per slice.
        while self._queue.empty():
            if job.run():
                return
        self._queue.put(job)
