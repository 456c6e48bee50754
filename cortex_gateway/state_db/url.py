"""`[state] url`: which database holds the gateway's state. Pure: a string in, a `StateURL` or an error out.

- absent: SQLite at `<[gateway] state_dir>/state.db`, made on first run;
- `sqlite:///ABSOLUTE/PATH.db`, or `sqlite:RELATIVE/PATH.db` (relative to the config file's directory);
- `postgresql://USER:PASSWORD@HOST:PORT/DATABASE` (or `postgres://`; libpq's query parameters, such as
  `?sslmode=require`, pass through to asyncpg): for several gateways sharing one state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from neuron.shared.config_fields import ConfigError, Section

FILE_NAME = "state.db"
FORMS = "sqlite:///ABSOLUTE/PATH.db, sqlite:RELATIVE/PATH.db or postgresql://USER@HOST:PORT/DATABASE"
_POSTGRES = ("postgresql", "postgres")
_PASSWORD = re.compile(r"(://[^:/@]*):[^@/]*@")


@dataclass(frozen=True)
class StateURL:
    dialect: Literal["sqlite", "postgresql"]
    path: Path | None = None  # SQLite's file
    dsn: str | None = None  # PostgreSQL's URL, as given (password included: never log it; see `redacted`)


def parse_state_url(url: str | None, state_dir: Path | None) -> StateURL:
    """The database `url` names (None: SQLite in `state_dir`); ValueError saying what is wrong otherwise."""
    if url is None:
        if state_dir is None:
            raise ValueError("no url, and no state dir to keep the default SQLite file in")
        return StateURL("sqlite", path=state_dir / FILE_NAME)
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        return StateURL("sqlite", path=_sqlite_path(rest))
    if scheme in _POSTGRES:
        _check_postgres(url)
        return StateURL("postgresql", dsn=url)
    raise ValueError(f"expected {FORMS}")


def _sqlite_path(rest: str) -> Path:
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host or not path:
            raise ValueError("a sqlite URL names a file, with no host: sqlite:///ABSOLUTE/PATH.db "
                             "(three slashes) or sqlite:RELATIVE/PATH.db")
        return Path("/" + path)
    if not rest or rest == ":memory:":
        raise ValueError("a sqlite URL names a file (an in-memory database would forget the usage at a restart): "
                         "sqlite:///ABSOLUTE/PATH.db or sqlite:RELATIVE/PATH.db")
    return Path(rest).expanduser()


def _check_postgres(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - read for its ValueError on a port that is no number
    except ValueError:
        raise ValueError(f"the port of a postgresql URL is a number from 1 to 65535 ({FORMS})") from None
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError("a postgresql URL names its database: postgresql://USER@HOST:PORT/DATABASE")


def read_state_url(state: Section) -> str | None:
    """`[state] url` of a config file, checked; a relative SQLite path made absolute (from the file's directory)."""
    url = state.opt_str("url", expected=FORMS)
    if url is None:
        return None
    try:
        parsed = parse_state_url(url, Path("."))
    except ValueError as exc:
        raise ConfigError(f"{state.at('url')}: {exc}, got {redacted(url)!r}") from None
    if parsed.dialect == "sqlite" and not parsed.path.is_absolute():
        return f"sqlite://{state.resolve(str(parsed.path))}"
    return url


def redacted(url: str) -> str:
    """The URL as logs and errors show it: any password replaced by ***."""
    return _PASSWORD.sub(r"\1:***@", url)
