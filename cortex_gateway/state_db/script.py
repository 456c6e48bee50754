"""Transaction scripts: each operation written once, for both dialects, as a generator of statements.

An operation (reserve, settle, create_key...) is a generator that yields `Statement`s and receives each
one's result; its return value is the operation's result. It does no I/O itself: a driver runs the
whole generator inside one transaction (SQLite: in its worker thread, under BEGIN IMMEDIATE;
PostgreSQL: on one pooled connection, in `conn.transaction()`), so the logic that decides (does the
reservation fit? was it settled already?) is the same text for both databases, and a script's
statements can never interleave with another's. The SQL is PostgreSQL's `$1` style, which SQLite reads
as numbered parameters once the `$` becomes `?` (`sqlite_sql`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Want = Literal["none", "one", "all"]


@dataclass(frozen=True)
class Statement:
    sql: str
    args: tuple
    want: Want  # "none": nothing back; "one": the first row (a tuple) or None; "all": a list of tuples


Script = Generator[Statement, Any, T]


class Driver(Protocol):
    """What `StateDB` needs of a database: each script factory's script run in one transaction."""

    dialect: str  # "sqlite" or "postgresql": the name migrations pick statements by
    where: str  # the file, or the URL without its password

    async def open(self) -> None: ...
    # durable=False: committed (atomic, seen by every reader, kept if the process dies) but not forced to the
    # disk before it returns; the next durable commit forces it too (a reservation, before its settle).
    async def write(self, make: Callable[[], Script[T]], durable: bool = True) -> T: ...
    async def read(self, make: Callable[[], Script[T]]) -> T: ...  # a script that changes nothing
    async def close(self) -> None: ...
    # Notifications between gateways (PostgreSQL's NOTIFY): a no-op on SQLite, where listen answers False.
    async def notify(self, channel: str, payload: str) -> None: ...
    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool: ...


def execute(sql: str, *args) -> Statement:
    return Statement(sql, args, "none")


def one(sql: str, *args) -> Statement:
    return Statement(sql, args, "one")


def rows(sql: str, *args) -> Statement:
    return Statement(sql, args, "all")


def drive(script: Script[T], run: Callable[[Statement], Any]) -> T:
    """Run a script synchronously: each statement through `run`, its result sent back (SQLite's thread)."""
    try:
        statement = next(script)
        while True:
            statement = script.send(run(statement))
    except StopIteration as done:
        return done.value


async def drive_async(script: Script[T], run: Callable[[Statement], Any]) -> T:
    """The same, awaiting each statement (asyncpg)."""
    try:
        statement = next(script)
        while True:
            statement = script.send(await run(statement))
    except StopIteration as done:
        return done.value


_PLACEHOLDER = re.compile(r"\$(\d+)")


def sqlite_sql(sql: str) -> str:
    """`$1` -> `?1`: SQLite's numbered parameters, the same numbers (our SQL has no `$` in literals)."""
    return _PLACEHOLDER.sub(r"?\1", sql)
