"""The state database in the gateway: `[state] url`, a first run, a database that cannot be reached, `kill -9`.

The kill test runs the gateway's own start (`open_for_gateway`: open, migrate, release what this gateway
left) in a child process that settles one request, reserves for a second, says so, and is killed with
SIGKILL while holding it; the next start over the same state dir must find the settled usage and give
the held tokens back. On SQLite and on a real PostgreSQL (tests/postgres_server.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cortex_gateway.app import create_app
from cortex_gateway.config import GatewayConfig, load_config
from cortex_gateway.state import STATE_DB
from cortex_gateway.state_db.gateway import INSTANCE_FILE, instance_id, open_for_gateway
from neuron.shared.config_fields import ConfigError
from tests.helpers import CortexProcess, free_port, stop_process, wait_for
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_startup_errors import assert_one_line, cortex, gateway_toml

# A gateway's start, one settled request, one held, then nothing until it is killed.
HOLDER = """
import asyncio, json, sys
from pathlib import Path
from cortex_gateway.config import GatewayConfig
from cortex_gateway.state import STATE_DB
from cortex_gateway.state_db.gateway import open_for_gateway

async def main(state_dir, url):
    db = await open_for_gateway(GatewayConfig(state_dir=Path(state_dir), state_url=url))
    done = await db.reserve("alice", "m1", "w", 100, 1000)
    await db.settle(done, 30, 12)
    held = await db.reserve("alice", "m1", "w", 500, 1000)
    print(json.dumps({"instance": db.instance_id, "held": held.tokens}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2] or None))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path) -> str | None:
    """None: the default, SQLite in the state dir; else a PostgreSQL database of the test's own."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


async def test_a_gateway_killed_holding_a_reservation_keeps_its_settled_usage_and_frees_the_rest(tmp_path, state_url):
    state_dir = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir), state_url or ""],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # the child's word that it holds the reservation: an event, not a delay
        assert line, f"the holder exited with {child.poll()}: {child.stderr.read()}"
        said = json.loads(line)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        stop_process(child)
        child.stdout.close()
        child.stderr.close()
    assert said["instance"] == instance_id(state_dir)  # the next start is the same gateway, by its state dir
    db = await open_for_gateway(GatewayConfig(state_dir=state_dir, state_url=state_url))
    try:
        [row] = await db.usage("alice")
        assert (row.prompt_tokens, row.completion_tokens, row.requests, row.reserved_tokens) == (30, 12, 1, 0)
        assert await db.budget_used("alice", "w") == (42, 0)
        assert await db.reserve("alice", "m1", "w", 958, 1000)  # all the room the dead process held is back
    finally:
        await db.close()


async def test_the_app_opens_its_database_at_start_and_a_restart_frees_what_it_held(tmp_path, state_url):
    """The gateway's own app (create_app) over no neurons: the database is there under STATE_DB once it has
    started, closed at cleanup; a reservation still held when it stopped is released by the next start."""
    config = GatewayConfig(state_dir=tmp_path / "state", state_url=state_url)
    async with TestClient(TestServer(create_app(config))) as client:
        db = client.app[STATE_DB]
        assert db.dialect == ("sqlite" if state_url is None else "postgresql")
        assert await db.reserve("alice", "m1", "w", 10, 10)
    async with TestClient(TestServer(create_app(config))) as client:
        assert await client.app[STATE_DB].budget_used("alice", "w") == (0, 0)


def test_a_gateway_keeps_its_id_in_its_state_dir(tmp_path):
    made = instance_id(tmp_path / "new")
    assert (tmp_path / "new" / INSTANCE_FILE).read_text().strip() == made == instance_id(tmp_path / "new")
    assert instance_id(tmp_path / "other") != made


def test_without_postgresql_its_tests_say_why(monkeypatch):
    import tests.postgres_server as server

    monkeypatch.setattr(server, "postgres_bin", lambda: None)
    assert "PostgreSQL is not installed" in server.why_not() and "make shells" in server.why_not()


# -- [state] url ---------------------------------------------------------------------------------
def config_with(tmp_path: Path, state: str) -> GatewayConfig:
    path = tmp_path / "cortex.toml"
    path.write_text(f"[state]\n{state}\n")
    return load_config(path)


def test_the_url_forms(tmp_path):
    assert config_with(tmp_path, "").state_url is None
    assert config_with(tmp_path, 'url = "sqlite:///var/lib/cortex/state.db"').state_url == \
        "sqlite:///var/lib/cortex/state.db"
    assert config_with(tmp_path, 'url = "sqlite:data/state.db"').state_url == \
        f"sqlite://{tmp_path.resolve() / 'data' / 'state.db'}"  # relative to the config file's directory
    pg = "postgresql://cortex:secret@db.internal:5432/cortex?sslmode=require"
    assert config_with(tmp_path, f'url = "{pg}"').state_url == pg


@pytest.mark.parametrize("url, says", [
    ("mysql://h/db", "expected sqlite:///ABSOLUTE/PATH.db, sqlite:RELATIVE/PATH.db or postgresql://"),
    ("sqlite://host/state.db", "with no host"),
    ("sqlite:", "names a file"),
    ("sqlite::memory:", "in-memory database would forget"),
    ("postgresql://h:port/db", "the port of a postgresql URL is a number"),
    ("postgresql://cortex@h:5432", "names its database"),
])
def test_a_bad_url_is_refused_naming_the_field(tmp_path, url, says):
    with pytest.raises(ConfigError) as refused:
        config_with(tmp_path, f'url = "{url}"')
    assert str(refused.value).startswith(f"{tmp_path / 'cortex.toml'}: [state].url: ") and says in str(refused.value)


def test_a_password_never_shows_in_an_error(tmp_path):
    with pytest.raises(ConfigError) as refused:
        config_with(tmp_path, 'url = "postgresql://cortex:hunter22@h:x/db"')
    assert "hunter22" not in str(refused.value) and "cortex:***@" in str(refused.value)


def test_a_url_that_is_no_string_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\[state\]\.url: expected sqlite:///"):
        config_with(tmp_path, "url = 5")


# -- cortex serve --------------------------------------------------------------------------------
def test_cortex_serve_makes_its_database_on_first_run(tmp_path):
    state_dir = tmp_path / "state"
    port = free_port()
    config = gateway_toml(tmp_path, port, free_port())
    with CortexProcess(["serve", "--config", config], port, tmp_path / "gateway.log",
                       env={"CORTEX_STATE_DIR": str(state_dir)}) as gateway:
        # No neurons: /health says 503, so the log's line that the ports listen is the event waited for.
        wait_for(lambda: "gateway on http://" in gateway.log() or gateway.proc.poll() is not None, 60,
                 "the gateway to listen")
        assert gateway.proc.poll() is None, gateway.log_tail()
        assert (state_dir / "state.db").exists() and (state_dir / INSTANCE_FILE).exists()
        assert "state in sqlite database" in gateway.log()


def test_a_database_that_cannot_be_reached_yet_is_waited_for_each_try_logged(tmp_path):
    closed = free_port()  # nothing listens there: refused, which may pass (a database still booting)
    extra = f'[state]\nurl = "postgresql://cortex:hunter22@127.0.0.1:{closed}/cortex"\n'
    port = free_port()
    config = gateway_toml(tmp_path, port, free_port(), extra)
    with CortexProcess(["serve", "--config", config], port, tmp_path / "gateway.log") as gateway:
        wait_for(lambda: "(attempt 2)" in gateway.log() or gateway.proc.poll() is not None, 60, "a second try")
        assert gateway.proc.poll() is None, gateway.log_tail()
        where = f"state database at postgresql://cortex:***@127.0.0.1:{closed}/cortex (password hidden) unreachable: "
        assert where in gateway.log() and "; retrying in 1 s (attempt 2)" in gateway.log()
        assert "hunter22" not in gateway.log()


def test_a_file_that_is_no_database_stops_cortex_serve_with_one_line(tmp_path):
    bogus = tmp_path / "not-a-db"
    bogus.write_text("hello, I am a text file, not SQLite\n" * 100)
    result = cortex("serve", "--config", gateway_toml(tmp_path, free_port(), free_port(),
                                                      f'[state]\nurl = "sqlite://{bogus}"\n'))
    assert_one_line(result, f"state database {bogus}: file is not a database")


def test_a_bad_url_stops_cortex_serve_with_one_line(tmp_path):
    result = cortex("serve", "--config", gateway_toml(tmp_path, free_port(), free_port(),
                                                      '[state]\nurl = "redis://h"\n'))
    assert_one_line(result, "cortex.toml: [state].url: expected sqlite:///")
