"""One thread per device, owning it for the daemon's lifetime.

CUDA contexts and llama.cpp contexts are not safe to drive from several
threads, and a long forward pass must never block the event loop. So every
load, forward pass and unload for a device runs on that device's thread, fed
through a job queue; the asyncio side awaits futures or reads a stream.

Streaming jobs are generators run in slices, so two models sharing a device
interleave instead of one waiting for the other's whole answer. An exception
in a job fails that job only: the thread and the other devices keep running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.02  # a streaming job yields the device to waiting jobs after this long
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
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
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


class StreamJob(Channel):
    """A generator run on the device thread in slices, its items read through the channel."""

    def __init__(self, make_gen: Callable[[], Iterator[Any]], loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.make_gen = make_gen
        self.gen: Iterator[Any] | None = None

    def run(self) -> bool:
        """Advance the generator for one slice; True when it is finished."""
        deadline = time.monotonic() + SLICE_SECONDS
        try:
            if self.gen is None:
                self.gen = self.make_gen()
            while not self.cancelled:
                item = next(self.gen, _STOP)
                if item is _STOP:
                    self.end()
                    return True
                self.push(item)
                if time.monotonic() >= deadline:
                    return False
        except BaseException as exc:  # noqa: BLE001 - re-raised on the reading side
            self.fail(exc)
            return True
        self._close_gen()
        self.end()
        return True

    def _close_gen(self) -> None:
        if self.gen is not None:
            close = getattr(self.gen, "close", None)
            if close:
                close()


END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DeviceWorker:
    """The thread that owns one device. `primary` jobs are FIFO; streams are time-sliced."""

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

    def stream(self, make_gen: Callable[[], Iterator[Any]]) -> StreamJob:
        """Start a generator on the device thread; read it with `async for` or `next_batch`."""
        job = StreamJob(make_gen, asyncio.get_running_loop())
        self._queue.put(job)
        return job

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

    def _requeue(self, job: StreamJob) -> None:
        # Keep running the stream while nothing else waits: no queue round trip per slice.
        while self._queue.empty():
            if job.run():
                return
        self._queue.put(job)
