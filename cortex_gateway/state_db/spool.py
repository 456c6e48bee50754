"""The usage spool: what a key without a budget used while the state database could not take it, on disk.

Such a key is served during an outage (nothing about it needs the database: docs/gateway.md), so its
usage must not be lost with it; nor that of a budgeted key's request whose settle the database could not
take (it went down mid-request). Each settled request that the database refused becomes one JSON line
with an id of its own, appended to `usage-spool.jsonl` in the gateway's state dir and forced to the disk
(write, fsync) before its usage counts as reported: a `kill -9` right after loses none of it.

Replay (`UsageSpool.replay`, on the gateway's rounds and at its start) first moves the file aside
(`usage-spool.jsonl.replaying`, an atomic rename: appends go on in a fresh file meanwhile), bills its
lines in the database in transactions that also record each line's id in `spooled_usage`, and then
deletes the file aside. A line whose id is recorded already is skipped, so a file replayed twice (a
`kill -9` between the commit and the delete, or a replay cut short half-way) bills each request once.
A last line cut short by a kill mid-write was never reported (its fsync had not returned): it is
skipped, and said so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

log = logging.getLogger("cortex.gateway.state_db")
SPOOL_FILE = "usage-spool.jsonl"
BATCH = 500  # lines billed per transaction on replay


@dataclass(frozen=True)
class SpooledUsage:
    """One request's usage, as `StateDB.record_usage` would have billed it, and the id it is replayed by."""

    id: str
    key: str
    model: str
    period: str
    prompt_tokens: int
    completion_tokens: int
    at: float  # when it was spooled, for a person reading the file
    reservation: str | None = None  # a budgeted key's: replayed as the settle of that reservation

    @classmethod
    def new(cls, key: str, model: str, period: str, prompt: int, completion: int, at: float,
            reservation: str | None = None) -> SpooledUsage:
        return cls(uuid.uuid4().hex, key, model, period, prompt, completion, at, reservation)

    def line(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def from_line(cls, raw: bytes) -> SpooledUsage | None:
        """The line's record, or None for one cut short or not of this shape."""
        try:
            fields = orjson.loads(raw)
            record = cls(**fields)
        except (orjson.JSONDecodeError, TypeError):
            return None
        counts = (record.prompt_tokens, record.completion_tokens)
        names = (record.id, record.key, record.model, record.period)
        if not all(isinstance(v, str) for v in names) or not all(type(v) is int and v >= 0 for v in counts) or \
                not isinstance(record.reservation, (str, type(None))):
            return None
        return record


class UsageSpool:
    """The spool file of one gateway (`path`), appended to by requests and replayed by one task at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.aside = path.with_name(path.name + ".replaying")
        self._file_lock = threading.Lock()  # appends (in worker threads) and the move aside, one at a time
        self._replaying = asyncio.Lock()
        self.spooled = 0  # lines appended since the last replay: the first of an outage is logged

    @classmethod
    def in_dir(cls, state_dir: Path) -> UsageSpool:
        return cls(state_dir / SPOOL_FILE)

    def pending(self) -> bool:
        """Whether there are lines to replay (a stat or two: cheap enough for every round)."""
        return any(p.exists() and p.stat().st_size > 0 for p in (self.aside, self.path))

    async def append(self, record: SpooledUsage) -> None:
        """Add the record's line, on the disk before this returns (OSError if it cannot be written)."""
        await asyncio.to_thread(self._append, record.line())
        self.spooled += 1
        if self.spooled == 1:
            log.warning("the state database cannot take usage: spooling it in %s (keys without a budget are "
                        "still served), replayed when it answers", self.path)
        log.info("usage of key %s spooled (%d + %d tokens): %d record(s) spooled since the last replay",
                 record.key, record.prompt_tokens, record.completion_tokens, self.spooled)

    def _append(self, line: bytes) -> None:
        with self._file_lock:
            made = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if made:
                _sync_dir(self.path.parent)  # the new file's name on the disk too, not only its bytes

    async def replay(self, bill: Callable[[list[SpooledUsage]], Awaitable[int]]) -> int:
        """Bill every spooled line through `bill` (which returns how many it had not billed before) and
        delete what was billed; the number of requests billed now. StateError if the database fails
        meanwhile: the lines stay, and the next replay takes them again."""
        async with self._replaying:
            total = 0
            while records := await asyncio.to_thread(self._take):
                billed = 0
                for start in range(0, len(records), BATCH):
                    billed += await bill(records[start:start + BATCH])
                await asyncio.to_thread(self._drop_aside)
                log.info("replayed %d spooled usage record(s) from %s into the state database (%d billed "
                         "already, skipped)", billed, self.path, len(records) - billed)
                self.spooled, total = 0, total + billed
            return total

    def _take(self) -> list[SpooledUsage]:
        """The lines aside, the spool moved aside first if nothing is; [] when there is nothing to replay."""
        with self._file_lock:
            if not self.aside.exists():
                if not self.path.exists():
                    return []
                os.replace(self.path, self.aside)
                _sync_dir(self.path.parent)
        lines = [line for line in self.aside.read_bytes().split(b"\n") if line.strip()]
        records = [SpooledUsage.from_line(line) for line in lines]
        if None in records:
            log.warning("%s: %d line(s) cut short or unreadable skipped (a line cut by a kill was never "
                        "reported)", self.aside, records.count(None))
        found = [r for r in records if r is not None]
        if not found:
            self._drop_aside()
        return found

    def _drop_aside(self) -> None:
        self.aside.unlink(missing_ok=True)
        _sync_dir(self.aside.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
