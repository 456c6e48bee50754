"""The tokenizer threads: daemon threads, so that stopping the neuron never waits for one.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter
exits, and shutting it down cannot stop a task that runs. One thread inside a
long tokenisation (llama.cpp parses control tokens in a raw prompt in time
quadratic in their number: minutes for a few MB) then held a stopping neuron
for as long: SIGTERM took 103 s. These threads are daemons, never joined: the
process exits once its own cleanup is done, whatever they are doing.

Work that can stop part-way (a prompt tokenised segment by segment) is run
with `call`, which hands it a `stop()` that turns true once its caller has
gone (the client left) or the pool is closed, so such a thread is back for
other requests at the next segment instead of finishing work nobody awaits.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class TokenizerPool(Executor):
    def __init__(self, workers: int, name: str = "tokenizer"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.closed = False
        self._workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True).start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self.closed:
                raise RuntimeError("the tokenizer threads are stopped: the neuron is shutting down")
            self._jobs.put((future, fn, args, kwargs))
        return future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args, stop)` on a tokenizer thread; `stop()` is true once the caller is cancelled or the
        pool closed."""
        gone = threading.Event()

        def stop() -> bool:
            return gone.is_set() or self.closed

        try:
            return await asyncio.get_running_loop().run_in_executor(self, fn, *args, stop)
        except asyncio.CancelledError:
            gone.set()
            raise

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        """Refuse new work and cancel what waits; never join a thread (`wait` is accepted and ignored)."""
        with self._lock:
            self.closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(self._workers):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            job = None  # the request's data is not kept alive by an idle thread
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it, as an executor does
                    future.set_exception(exc)
            del future, fn, args, kwargs
