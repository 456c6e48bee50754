"""Handing the memory of large request bodies back to the system once a burst of them is over.

A body of megabytes is read, parsed into objects and freed within its request, but glibc's
allocator keeps most freed pages mapped for the next allocation: after a burst of large bodies a
server keeps half or more of its peak for good (3,000 messages of 10 KB, sixteen times, kept a
neuron 130 to 190 MiB above its idle size; trimmed, it comes back within a few MiB).
`malloc_trim(0)` returns every arena's free pages. It walks the heaps under
their locks, so it runs in a thread, off the event loop, at most once a `delay_s`, and always
`delay_s` or more after the last large body (whose memory is free by then); elsewhere than glibc
there is nothing to call and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("cortex.shared.heap")

# A body at least this large is followed by a trim. Smaller ones are the common case, and what they
# leave behind is reused by the next request.
TRIM_AFTER_BYTES = 1 << 20


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Trims the heap `delay_s` after a large body; bodies that end while a trim waits get one more."""

    def __init__(self, delay_s: float = 1.0, trim: Callable[[int], int] | None = None):
        self.delay_s = delay_s
        self._trim = trim or malloc_trim()
        self._pending: asyncio.TimerHandle | None = None
        self._again = False  # a large body ended while a trim was pending: its memory may not have been free
        self.trims = 0  # trims started, for tests

    @property
    def pending(self) -> bool:
        """A trim is scheduled."""
        return self._pending is not None

    def after_body(self, size: int) -> None:
        """Call when a request whose body had `size` bytes has ended."""
        if self._trim is None or size < TRIM_AFTER_BYTES:
            return
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.delay_s, self._start)
        else:
            self._again = True

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.trims += 1
        try:
            loop.run_in_executor(None, self._run)
        except RuntimeError:  # the server is stopping and its executor with it: nothing left to trim for
            return
        self._pending = loop.call_later(self.delay_s, self._start) if self._again else None
        self._again = False

    def _run(self) -> None:
        try:
            self._trim(0)
        except Exception:  # never worth failing a server over; the memory just stays mapped
            log.debug("malloc_trim failed", exc_info=True)
