"""What a gateway unit's sandbox must allow for the gateway's state: pure, from the config file's tables.

The gateway writes its `state_dir` (the `gateway_id` file that names this instance, what it learns)
and, by default, its SQLite state database there. `ProtectSystem=strict` makes everything else
read-only, so a `state_dir` or a `sqlite:` file outside the unit's own state directory must be in
`ReadWritePaths=`, or the gateway would fail at start. A PostgreSQL URL needs only the network,
which the sandbox allows (AF_INET, AF_INET6, and AF_UNIX for a local socket); a database on this
machine must start before the gateway, which exits with status 2 (not restarted) when it cannot connect.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cortex_cli.service_unit import STATE_DIR

# ~/.cortex/state, the default state_dir, as a system unit sees it: its HOME is STATE_DIR.
DEFAULT_GATEWAY_STATE = Path(STATE_DIR, ".cortex/state")


def state_needs(top: dict, config: Path, request) -> tuple[list[tuple[Path, str]], list[str]]:
    """(paths the gateway writes, each with why; warnings) for the config file `top` read from `config`.

    `request` is the `ServiceRequest` (its `user_unit` and `unit_name`); a ValueError says what is wrong."""
    from cortex_gateway.state_db.url import parse_state_url, read_state_url
    from neuron.shared.config_fields import Section

    section = Section(top, config)
    state_dir = _service_path(section.table("gateway"), "state_dir", request.user_unit)
    url = parse_state_url(read_state_url(section.table("state")), state_dir or DEFAULT_GATEWAY_STATE)
    writes: list[tuple[Path, str]] = []
    warnings: list[str] = []
    if state_dir is not None:  # absent: ~/.cortex/state, inside the unit's state directory already
        writes.append((state_dir, "The gateway's state directory: its gateway_id and what it learns"))
    if url.dialect == "sqlite" and not url.path.parent.is_relative_to(state_dir or DEFAULT_GATEWAY_STATE):
        writes.append((url.path.parent, "The state database's directory: SQLite keeps its -wal and -shm beside it"))
        if url.path.parent == config.parent and not request.user_unit:
            warnings.append(f"{url.path.name} sits beside {config.name}: the database needs that directory "
                            f"writable, which would let the service replace {config.name} (its keys) too; "
                            f"keep it in {STATE_DIR} (url = \"sqlite://{STATE_DIR}/state.db\")")
    elif url.dialect == "postgresql" and is_local(url.dsn) and not request.user_unit:
        unit = (request.unit_name or "cortex-gateway").removesuffix(".service")
        warnings.append("the state database is on this machine: start the gateway after it (one started first "
                        "waits for it, retrying, before it listens); run `systemctl edit "
                        f"{unit}` and add: [Unit] After=postgresql.service Wants=postgresql.service")
    return writes, warnings


def _service_path(section, key: str, user_unit: bool) -> Path | None:
    """A path setting as the service reads it: a system unit's `~` is its home, the state directory."""
    value = section.values.get(key)
    if not user_unit and isinstance(value, str) and (value == "~" or value.startswith("~/")):
        return Path(STATE_DIR, value[2:])
    return section.opt_path(key)


def is_local(dsn: str) -> bool:
    """A PostgreSQL URL naming this machine: loopback, localhost, a Unix socket, or no host at all."""
    from neuron.shared.config import is_loopback

    parts = urlsplit(dsn)
    host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
    return not host or host.startswith("/") or is_loopback(host)
