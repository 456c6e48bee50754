"""Reading shared state afresh when another gateway says it changed (a PostgreSQL NOTIFY), without piling up
reads: one read at a time, and one more after it if told again meanwhile, however many notices came.
The key cache and the shared pins and drains both read this way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Rereads:
    """`told()` starts `read` unless a read is under way (then that read is followed by one more). `read`
    answering False means its result was stale (a change through this gateway came meanwhile): read again."""

    def __init__(self, read: Callable[[], Awaitable[bool | None]], what: str, log: logging.Logger):
        self._read, self._what, self._log = read, what, log
        self._again = False
        self.task: asyncio.Task | None = None

    def told(self) -> None:
        self._again = True
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._read_while_told())

    async def _read_while_told(self) -> None:
        while self._again:
            self._again = False
            if await self._read() is False:
                self._again = True
        self._log.info("another gateway changed %s: read them afresh", self._what)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def close(self) -> None:
        """Cancel a read under way and wait for it to end."""
        self.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
