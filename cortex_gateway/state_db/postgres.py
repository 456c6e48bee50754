"""The PostgreSQL driver: asyncpg (a native asyncio driver: no thread, no blocking call), one pool per gateway.

A script runs on one pooled connection inside one transaction at READ COMMITTED, PostgreSQL's default,
which is what the scripts are written for: a conditional UPDATE waits for a concurrent one on the same
row and then re-checks its WHERE on the committed row (see `usage`). A transaction PostgreSQL aborts as
a deadlock or a serialisation failure is run again from its start (the scripts take their locks in
one order, so this is a safety net). asyncpg is imported on open, so `import cortex_gateway` stays light.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from cortex_gateway.state_db.records import StateError
from cortex_gateway.state_db.script import Script, Statement, T, drive_async
from cortex_gateway.state_db.url import redacted

log = logging.getLogger("cortex.gateway.state_db")
POOL_SIZE = 10  # connections per gateway: each request holds one only for its few statements
CONNECT_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_S = 30.0  # a statement waiting longer (a lock, a server gone quiet) fails: SQLite's busy timeout
RETRIES = 3  # runs of a transaction PostgreSQL aborted for a deadlock or a serialisation failure


class PostgresDriver:
    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        self.url = url
        self.pool_size = pool_size
        self._pool = None
        self._asyncpg = None
        self._listener = None  # a connection of its own for LISTEN, outside the pool
        self._listening = asyncio.Lock()  # two rounds reconnecting at once make one connection, not two

    @property
    def where(self) -> str:
        return redacted(self.url)

    async def open(self) -> None:
        import asyncpg

        self._asyncpg = asyncpg
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size,
                                                   timeout=CONNECT_TIMEOUT_S, command_timeout=STATEMENT_TIMEOUT_S)
        except (*_failures(asyncpg), ValueError) as exc:
            raise StateError(f"cannot connect to the state database {self.where}: {_reason(exc)}{_fix(asyncpg, exc)}",
                             transient=_transient(asyncpg, exc), reason=_reason(exc)) from None

    async def write(self, make: Callable[[], Script[T]], durable: bool = True) -> T:
        """Run the script `make()` in a transaction; again, afresh, if PostgreSQL aborted it. Not `durable`:
        synchronous_commit off for it (committed and visible at once, flushed within the WAL writer's delay)."""
        retry = (self._asyncpg.DeadlockDetectedError, self._asyncpg.SerializationError)
        for attempt in range(1, RETRIES + 1):
            try:
                return await self._transaction(make(), durable)
            except retry as exc:
                if attempt == RETRIES:
                    raise StateError(f"state database {self.where}: {_reason(exc)}") from exc
                log.info("state database: %s; running the transaction again", _reason(exc))
        raise AssertionError("unreachable")

    async def read(self, make: Callable[[], Script[T]]) -> T:
        """On PostgreSQL a read is a transaction like any other, on any pooled connection."""
        return await self.write(make)

    async def _transaction(self, script: Script[T], durable: bool = True) -> T:
        asyncpg = self._asyncpg
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not durable:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                return await drive_async(script, lambda statement: _statement(conn, statement))
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            raise
        except _failures(asyncpg) as exc:
            raise StateError(f"state database {self.where}: {_reason(exc)}", transient=_transient(asyncpg, exc),
                             reason=_reason(exc)) from exc

    async def notify(self, channel: str, payload: str) -> None:
        """NOTIFY every gateway listening on `channel` (after the change it tells of has committed)."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        except _failures(self._asyncpg) as exc:
            raise StateError(f"state database {self.where}: {_reason(exc)}") from exc

    async def listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        """LISTEN on `channel`, `callback(payload)` on each notification; again after the database dropped the
        connection (a restart): a caller calls this on each of its rounds and reads afresh what it missed."""
        async with self._listening:
            return await self._listen(channel, callback)

    async def _listen(self, channel: str, callback: Callable[[str], None]) -> bool:
        asyncpg = self._asyncpg
        if self._listener is not None and not self._listener.is_closed():
            return True
        conn = None
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_S)
            await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))
        except _failures(asyncpg) as exc:
            if conn is not None:
                conn.terminate()
            raise StateError(f"state database {self.where}: {_reason(exc)}") from exc
        self._listener = conn
        return True

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.terminate()  # no round trip: it only listens
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _statement(conn, statement: Statement) -> Any:
    if statement.want == "one":
        row = await conn.fetchrow(statement.sql, *statement.args)
        return None if row is None else tuple(row)
    if statement.want == "all":
        return [tuple(row) for row in await conn.fetch(statement.sql, *statement.args)]
    await conn.execute(statement.sql, *statement.args)
    return None


def _failures(asyncpg) -> tuple[type[BaseException], ...]:
    """What a lost or refusing server raises: the socket's errors, the server's, and asyncpg's own (a connection
    cut mid-statement, while the server shuts down, can surface as its InternalClientError)."""
    return (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# SQLSTATE classes of a server that may answer if asked again: 08 connection exception, 53 insufficient
# resources (too many connections), 57P operator intervention (shutting down, crashed, "the database
# system is starting up"), 40 a transaction rolled back (a deadlock, a serialisation failure).
_TRANSIENT_SQLSTATES = ("08", "53", "57P", "40")


def _transient(asyncpg, exc: BaseException) -> bool:
    """Whether asking again may succeed: the socket's errors (refused, reset, a name that did not resolve:
    socket.gaierror is an OSError), a timeout, asyncpg's connection cut mid-statement, and the server's
    errors of the SQLSTATE classes above. Anything else (a bad URL, a wrong password, no such database,
    SQL the server rejects) stays as it is until a person changes it."""
    if isinstance(exc, ValueError):  # a URL asyncpg cannot read (its ClientConfigurationError is one too)
        return False
    if isinstance(exc, (OSError, TimeoutError, asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError)):
        return True
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES)


def _fix(asyncpg, exc: BaseException) -> str:
    """What to change, for the failures to connect a person fixes: said after the server's own words."""
    if isinstance(exc, ValueError):
        return "; fix [state] url (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        return "; fix the user or password in [state] url, or the server's pg_hba.conf"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "; create that database (createdb) or fix its name in [state] url"
    return ""
