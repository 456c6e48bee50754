"""The state database in the gateway's app: opened and migrated at start, closed last, and this gateway's name.

A gateway names itself once, in a file of its state dir (`gateway_id`), and keeps that name across
restarts: so at its next start, after a crash or a `kill -9`, it knows which reservations were its own
and releases them (nothing of that process will ever settle them), while those of other gateways
sharing the same PostgreSQL stay held. Two gateways sharing one database need state dirs of their own.
The state dir also holds the usage spool (`spool`): replayed at the start, and every `SPOOL_ROUND_S`.

A database that cannot be reached at the start, for a reason that may pass (`StateError.transient`: the
server refused the connection or is still starting up, a timeout, a name that did not resolve) is asked
again, with a backoff up to `RETRY_CAP_S`, for as long as it takes, each try logged; any other failure (a
bad URL or password, a database that does not exist, a migration that failed) ends the start at once
with exit status 2, which the systemd unit does not restart. The gateway does not listen meanwhile,
although routing needs no database: keys made through the admin API live only there, so a gateway that
has never read them cannot tell a request without a key from one that needs none (it would open the API,
or refuse everyone), and nothing may be written before the migrations ran. A load balancer's health
check sees it down, and sends the traffic to a gateway that has its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from cortex_gateway.state import RESPONSE_STORE, STATE_DB
from cortex_gateway.state_db.database import StateDB
from cortex_gateway.state_db.records import StateError
from cortex_gateway.state_db.spool import UsageSpool
from cortex_gateway.state_db.url import redacted
from neuron.shared.files import write_atomic

if TYPE_CHECKING:
    from cortex_gateway.config import GatewayConfig

log = logging.getLogger("cortex.gateway.state_db")
INSTANCE_FILE = "gateway_id"
RETRY_FIRST_S = 0.5  # the first wait for a database not reachable at the start, doubled on each try...
RETRY_CAP_S = 10.0  # ...up to this
SPOOL_ROUND_S = 2.0  # how often spooled usage is offered to the database again
BILLED_KEEP_S = 7 * 86400  # how long a billed usage id is kept against a replay of the same request
PRUNE_EVERY = 1800  # rounds between two prunes of those ids (an hour at SPOOL_ROUND_S)


def instance_id(state_dir: Path) -> str:
    """This gateway's name on its reservations: read from the state dir, made there on first run."""
    path = state_dir / INSTANCE_FILE
    try:
        if path.exists() and (known := path.read_text().strip()):
            return known
        made = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"  # the host, for a person reading the table
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, made + "\n")
        return made
    except OSError as exc:
        raise StateError(f"cannot keep the gateway's id in {path}: {exc.strerror or exc}; "
                         f"set [gateway] state_dir to a directory the gateway can write") from None


async def open_waiting(config: GatewayConfig) -> StateDB:
    """`open_for_gateway`, tried again after a transient failure (see the module's doc) until it succeeds."""
    attempt = 0
    while True:
        try:
            return await open_for_gateway(config)
        except StateError as exc:
            if not exc.transient:
                raise
            attempt += 1
            delay = min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (attempt - 1))
            log.warning("state database at %s unreachable: %s; retrying in %g s (attempt %d)",
                        _where(config), exc.reason, delay, attempt)
            await asyncio.sleep(delay)


def _where(config: GatewayConfig) -> str:
    """The URL as the log shows it: the password, if any, replaced, and said so."""
    shown = redacted(config.state_url or "")
    return f"{shown} (password hidden)" if shown != config.state_url else shown


async def open_for_gateway(config: GatewayConfig) -> StateDB:
    """Open and migrate the database of `[state] url`, bill the usage a previous run spooled, and release
    the reservations it held."""
    spool = UsageSpool.in_dir(config.state_dir)
    db = await StateDB.open(config.state_url, config.state_dir, instance_id(config.state_dir), spool=spool)
    try:
        await db.replay_spool()
        released = await db.release_stale()
    except BaseException:
        await db.close()
        raise
    if released.reservations:
        log.warning("released %d reservation(s) of %d tokens left by this gateway's previous run (%s)",
                    released.reservations, released.tokens, db.instance_id)
    log.info("state in %s database %s", db.dialect, db.where)
    return db


def state_ctx(config: GatewayConfig):
    """The app's cleanup_ctx entry: the database open before anything else starts, closed after all else."""
    async def ctx(app: web.Application):
        db = app[STATE_DB] = await open_waiting(config)
        if db.dialect == "postgresql" and RESPONSE_STORE in app:  # SQLite: one gateway, its responses in memory
            app[RESPONSE_STORE].attach(db)
        rounds = asyncio.create_task(replay_rounds(db))
        yield
        rounds.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rounds
        if RESPONSE_STORE in app:
            await app[RESPONSE_STORE].close()  # its last writes, before the database closes
        await db.close()

    return ctx


async def replay_rounds(db: StateDB, interval: float = SPOOL_ROUND_S) -> None:
    """Offer the spooled usage to the database every `interval`, while there is any (a stat when there is not),
    and prune the billed usage ids now and then. A failure is the outage metering already logged; the next
    round tries again."""
    turn = 0
    while True:
        await asyncio.sleep(interval)
        turn += 1
        try:
            await db.replay_spool()
            if turn % PRUNE_EVERY == 1:  # the first round and every hour: billed ids past the kept span
                await db.prune_billed(BILLED_KEEP_S)
        except StateError as exc:
            log.debug("spooled usage not replayed yet: %s", exc)
        except OSError as exc:
            log.error("cannot read the usage spool %s: %s", db.spool.path if db.spool else "?", exc)
