"""A real PostgreSQL for the tests: `initdb` and `postgres` on a free loopback port, in a temp dir of its own.

Debian's `postgresql` package (`make shells` installs it) keeps its programs under
/usr/lib/postgresql/<version>/bin, off the PATH; they are looked for on the PATH first, then there
(newest version first), then where `pg_config --bindir` says. PostgreSQL refuses to run as root, so
under root every command runs as the `postgres` system user (`runuser -u postgres --`) in a temp dir
that user owns; as anyone else, as that user. Where PostgreSQL is absent the tests that need it are
skipped, saying so. One server serves a whole session; each test gets a database of its own.

The server runs with fsync off: the tests kill gateways, never the database, and a cluster on a 2-core
test box then starts in a second.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, stop_process, wait_for

SUPERUSER = "cortex"


def postgres_bin() -> Path | None:
    """The directory holding initdb and postgres, or None if PostgreSQL is not installed."""
    if found := shutil.which("initdb"):  # a link on the PATH (/usr/local/bin/initdb): where it points has the rest
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    return None


def _version(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def why_not() -> str | None:
    """Why PostgreSQL cannot run here, or None if it can."""
    if postgres_bin() is None:
        return ("PostgreSQL is not installed (no initdb on the PATH, under /usr/lib/postgresql/*/bin or at "
                "pg_config --bindir): `make shells` installs Debian's postgresql where apt-get can")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or _no_user("postgres")):
        return "running as root, PostgreSQL needs the `postgres` user and runuser to drop to it"
    return None


def _no_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


class Postgres:
    """A cluster in a temp dir, serving on 127.0.0.1:`port`; always `stop()` it (or use it in a `with`)."""

    def __init__(self):
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="cortex-pg-"))  # under /tmp: the postgres user can reach it
        self.data, self.log_path = self.dir / "data", self.dir / "postgres.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._log = open(self.log_path, "ab")
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.proc = subprocess.Popen(
            self._command("postgres", "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                          "-k", str(self.dir), "-c", "fsync=off", "-c", "full_page_writes=off",
                          "-c", "max_connections=200"),
            stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_root else command

    def _run(self, program: str, *args: str) -> str:
        out = subprocess.run(self._command(program, *args), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{program} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            probe = subprocess.run(self._command("pg_isready", "-h", "127.0.0.1", "-p", str(self.port)),
                                   capture_output=True)
            return probe.returncode == 0
        wait_for(ready, timeout, "postgres to accept connections")

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """A fast shutdown (clients cut off, no wait for them), then the process is waited for; the dir goes."""
        try:
            if self.proc.poll() is None:
                subprocess.run(self._command("pg_ctl", "-D", str(self.data), "stop", "-m", "fast", "-w"),
                               capture_output=True, timeout=60)
            stop_process(self.proc, timeout=30)  # ended already, or SIGTERM then SIGKILL
        finally:
            self._log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session; skipped, saying why, where it cannot run."""
    if reason := why_not():
        pytest.skip(reason)
    server = Postgres()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    """A database of this test's own on the session's PostgreSQL."""
    return postgres.new_database()
