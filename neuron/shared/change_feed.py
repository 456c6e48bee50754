"""One computation shared by every stream that watches it: the neuron's /health/stream, the gateway's
/admin/status/stream.

A feed runs its `check` every `check_s` while at least one stream is open, and not at all while none is;
each stream waits on the feed's version, which moves when a check finds the answer changed. So a node
watched by three gateways, or a gateway watched by three consoles, works no harder than for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect

from aiohttp import web


class ChangeFeed:
    """The version of an answer, moved by `check` (which a subclass defines: True when the answer changed,
    sync or async), and the streams waiting on it."""

    def __init__(self, check_s: float):
        self.check_s = check_s
        self.version = 0
        self.closed = False
        self._changed = asyncio.Condition()
        self._watchers = 0
        self._task: asyncio.Task | None = None

    def check(self):
        raise NotImplementedError

    async def next_change(self, seen: int, timeout: float) -> bool:
        """Wait until the version is past `seen` or the feed closes (True), or `timeout` passes (False)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version != seen or self.closed), timeout)
            except TimeoutError:
                return False
        return True

    @contextlib.asynccontextmanager
    async def watching(self):
        """One stream's stay: the feed checks while any stream is open."""
        self._watchers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._watchers -= 1
            if not self._watchers and self._task is not None:
                self._task.cancel()
                self._task = None

    async def check_now(self) -> None:
        """One check, its watchers told if the answer moved."""
        moved = self.check()
        if inspect.isawaitable(moved):
            moved = await moved
        if moved:
            await self._tell()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            await self.check_now()

    async def close(self, _app: web.Application | None = None) -> None:
        """The server is stopping: every stream ends now, so its watchers learn it at once and the server's
        shutdown does not wait on streams that would never end by themselves."""
        self.closed = True
        await self._tell()

    async def _tell(self) -> None:
        async with self._changed:
            self._changed.notify_all()
