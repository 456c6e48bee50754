"""After a burst of large bodies a server hands the memory back instead of keeping its peak (issue 20,
finding 14).

RSS is compared with the same process's idle size and peak, never with a fixed number, and the
bound is loose: without the trim the neuron stays half to two thirds of the way up to its peak (130
to 190 MiB above idle here), with it it comes back within a few MiB of idle; the test allows a fifth
of the way.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from neuron.shared.heap import TRIM_AFTER_BYTES, HeapTrimmer, malloc_trim
from tests.helpers import start_neuron

MIB = 2**20


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class PeakWatch:
    """The highest RSS of a process while the block runs, sampled from a thread."""

    def __init__(self, proc: psutil.Process):
        self.proc, self.peak, self._stop = proc, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.skipif(malloc_trim() is None, reason="not glibc: there is no malloc_trim to release memory with")
def test_the_neuron_releases_its_peak_after_a_burst_of_large_bodies(tmp_path):
    neuron = start_neuron(tmp_path, tmp_path)
    try:
        proc = psutil.Process(neuron.proc.pid)
        # 29 MB of JSON in 10 KB messages, under the 64 MiB body bound: parsed, then refused (no such model).
        body = json.dumps({"model": "none", "messages": [{"role": "user", "content": "a" * 10_000}] * 3000}).encode()
        assert post(neuron.url, b'{"model": "none", "messages": []}') in (400, 404)  # the routes are warm
        idle = proc.memory_info().rss
        with PeakWatch(proc) as watch, ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: post(neuron.url, body), range(16))) == {404}
        rise = watch.peak - idle
        assert rise > 100 * MIB, f"the burst raised RSS by only {rise / MIB:.0f} MiB: nothing to release"
        ceiling = idle + 0.2 * rise
        deadline = time.monotonic() + 60
        while (rss := proc.memory_info().rss) > ceiling:
            assert time.monotonic() < deadline, (f"RSS stays at {rss / MIB:.0f} MiB after a burst that took it "
                                                 f"from {idle / MIB:.0f} to {watch.peak / MIB:.0f} MiB")
            time.sleep(0.2)
    finally:
        neuron.terminate()


async def test_trims_follow_large_bodies_once_per_interval_and_after_the_last():
    loop = asyncio.get_running_loop()
    trimmed: asyncio.Queue = asyncio.Queue()
    trimmer = HeapTrimmer(delay_s=0.05, trim=lambda pad: loop.call_soon_threadsafe(trimmed.put_nowait, pad))
    trimmer.after_body(TRIM_AFTER_BYTES - 1)
    assert not trimmer.pending, "a small body is not followed by a trim"
    for _ in range(3):  # three large bodies end within one interval
        trimmer.after_body(TRIM_AFTER_BYTES)
    async with asyncio.timeout(30):
        assert await trimmed.get() == 0
        assert await trimmed.get() == 0  # one more for the bodies that ended while the first waited
    assert not trimmer.pending and trimmer.trims == 2, "and no more"
