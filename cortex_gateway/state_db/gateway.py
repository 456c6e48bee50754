"""The state database in the gateway's app: opened and migrated at start, closed last, and this gateway's name.

A gateway names itself once, in a file of its state dir (`gateway_id`), and keeps that name across
restarts: so at its next start, after a crash or a `kill -9`, it knows which reservations were its own
and releases them (nothing of that process will ever settle them), while those of other gateways
sharing the same PostgreSQL stay held. Two gateways sharing one database need state dirs of their own.
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from cortex_gateway.state import RESPONSE_STORE, STATE_DB
from cortex_gateway.state_db.database import StateDB
from cortex_gateway.state_db.records import StateError
from neuron.shared.files import write_atomic

if TYPE_CHECKING:
    from cortex_gateway.config import GatewayConfig

log = logging.getLogger("cortex.gateway.state_db")
INSTANCE_FILE = "gateway_id"


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


async def open_for_gateway(config: GatewayConfig) -> StateDB:
    """Open and migrate the database of `[state] url`, and release what a previous run of this gateway held."""
    db = await StateDB.open(config.state_url, config.state_dir, instance_id(config.state_dir))
    try:
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
        db = app[STATE_DB] = await open_for_gateway(config)
        if db.dialect == "postgresql" and RESPONSE_STORE in app:  # SQLite: one gateway, its responses in memory
            app[RESPONSE_STORE].attach(db)
        yield
        if RESPONSE_STORE in app:
            await app[RESPONSE_STORE].close()  # its last writes, before the database closes
        await db.close()

    return ctx
