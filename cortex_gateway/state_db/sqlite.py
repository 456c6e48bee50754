"""The SQLite driver: the standard library's sqlite3, each connection in a worker thread of its own.

A script runs whole inside its worker (one call into the thread, not one per statement), so the event
loop never waits on the file and a transaction's statements cannot interleave with another coroutine's.
Writes go through one writer thread under BEGIN IMMEDIATE, which takes SQLite's write lock before the
first read: a reservation's check and its update are one step, also against another gateway process
on the same file (it waits on the lock, up to the busy timeout). Reads go through a reader thread of
their own, which WAL lets run beside a write (the hot path's lookups never queue behind an fsync).
synchronous=FULL: a commit is on the disk before `settle` returns, power cuts included. A write asked for
without durability (a reservation) commits with synchronous=NORMAL: in WAL mode it is kept if the process
dies (kill -9) and is forced to the disk by the next FULL commit, its settle's; a power cut before that
loses it with the request it held for, which had not been billed either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from cortex_gateway.state_db.records import StateError
from cortex_gateway.state_db.script import Script, Statement, T, drive, sqlite_sql

BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's transaction on the same file


@contextlib.contextmanager
def _directory_locked(directory: Path) -> Iterator[None]:
    """Connections opened one at a time, across processes: SQLite answers "database is locked" at once,
    without waiting out the busy timeout, to a connection asking for WAL while another switches a new file
    to it (two gateways, or a gateway's two threads, on a first run). flock on the directory: no extra file."""
    if fcntl is None:  # not on Linux or macOS: the race stays, on a first run only
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _Worker:
    """One thread, and the one connection it alone uses."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"cortex-state-{name}")
        self.conn: sqlite3.Connection | None = None
        self.closed = False
        self.synchronous = "FULL"

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; the driver says BEGIN and COMMIT itself.
        with _directory_locked(self.path.parent):
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _run(self, script: Script[T], begin: str, synchronous: str = "FULL") -> T:
        try:
            if self.conn is None:
                self.conn = self._connect()
            if synchronous != self.synchronous:  # set between transactions: it applies to the next commit
                self.conn.execute(f"PRAGMA synchronous={synchronous}")
                self.synchronous = synchronous
            return self._transaction(script, begin)
        except sqlite3.Error as exc:  # the file's trouble (locked too long, disk full, not a database), said so
            raise StateError(f"state database {self.path}: {exc}") from exc

    def _transaction(self, script: Script[T], begin: str) -> T:
        self.conn.execute(begin)
        try:
            result = drive(script, self._statement)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def _statement(self, statement: Statement) -> Any:
        cursor = self.conn.execute(sqlite_sql(statement.sql), statement.args)
        if statement.want == "one":
            return cursor.fetchone()
        return cursor.fetchall() if statement.want == "all" else None

    async def run(self, script: Script[T], begin: str, synchronous: str = "FULL") -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._run, script, begin, synchronous)

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def close(self) -> None:
        """Close the connection in its thread, then end the thread; a second close does nothing."""
        if self.closed:
            return
        self.closed = True
        await asyncio.get_running_loop().run_in_executor(self.executor, self._close)
        self.executor.shutdown(wait=True)


class SQLiteDriver:
    dialect = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self._writer = _Worker(path, "writer")
        self._reader = _Worker(path, "reader")

    @property
    def where(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        """Make the directory (the file comes with the first write: the migrations)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot make the directory of the state database {self.path}: "
                             f"{exc.strerror or exc}") from None

    async def write(self, make: Callable[[], Script[T]], durable: bool = True) -> T:
        """Run the script `make()` in one transaction that holds the write lock from its start."""
        return await self._writer.run(make(), "BEGIN IMMEDIATE", "FULL" if durable else "NORMAL")

    async def read(self, make: Callable[[], Script[T]]) -> T:
        """A read-only script, on a snapshot (a deferred BEGIN) taken beside any write."""
        return await self._reader.run(make(), "BEGIN")

    async def notify(self, channel: str, payload: str) -> None:
        """No notifications on SQLite: one gateway, whose own changes apply at once; others read on their rounds."""

    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        return False

    async def close(self) -> None:
        await asyncio.gather(self._writer.close(), self._reader.close())

