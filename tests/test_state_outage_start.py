"""A gateway and a state database that is not there (issue 25, item 1), over real processes and a real
PostgreSQL:

- started while its PostgreSQL is stopped, the gateway says so and retries with a backoff (not listening
  meanwhile: it cannot know the database's keys), then connects, migrates and serves once the server is up;
- a database that does not exist, or a role the server does not know, ends the start at once with exit
  status 2 and a line saying what to fix (nothing a retry would change);
- the usage of a key without a budget, served while the database is down, is spooled on disk and billed
  once when it is back: by the running gateway's rounds, and by a gateway restarted after a `kill -9`.

Skipped, saying why, without PostgreSQL (tests/postgres_server.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.helpers import CORTEX, killed_after, load_models, start_gateway, start_neuron, wait_for
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_budgets_gateway import ADMIN, AUTH_TOML, MODEL, billed, chat, make_key, oai, usage_of
from tests.test_shared_state_outage import restartable  # noqa: F401 - a fixture

CONFIG_KEY = "config-key-spooled-01"
CONFIG_KEY_NAME = "key-" + hashlib.sha256(CONFIG_KEY.encode()).hexdigest()[:8]  # auth.AuthSettings.name_of
KEYED_TOML = f'[auth]\nadmin_keys = ["{ADMIN}"]\nkeys = ["{CONFIG_KEY}"]'


def test_a_gateway_started_before_its_database_waits_for_it_then_serves(tmp_path, models_dir,
                                                                        restartable):  # noqa: F811
    url = restartable.new_database()  # empty: the gateway migrates it once it can reach it
    restartable.halt()
    with start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, (MODEL,))
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=f'{AUTH_TOML}\n[state]\nurl = "{url}"',
                           wait=False) as gateway:
            where = url.replace("postgresql://cortex@", "")
            wait_for(lambda: "(attempt 2)" in gateway.log(), what="the gateway to retry")
            line = next(line for line in gateway.log().splitlines() if "(attempt 1)" in line)
            assert "state database at postgresql://" in line and where in line and "unreachable: " in line, line
            assert "retrying in 0.5 s" in line, line
            assert gateway.proc.poll() is None, "a database not up yet is waited for, not a reason to exit"
            with pytest.raises(urllib.error.URLError) as refused:  # not listening meanwhile: it cannot know
                urllib.request.urlopen(gateway.url + "/health", timeout=5)  # the database's keys
            assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
            restartable.start()
            gateway.wait_healthy()
            assert "migrated to schema version" in gateway.log()
            _, key = make_key(gateway)  # a key of the database, through the admin API
            assert chat(oai(gateway, key), 4, stream=False) > 0


def start_failure(tmp_path, url: str) -> subprocess.CompletedProcess:
    (tmp_path / "cortex.toml").write_text(f'[gateway]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n'
                                          f'[state]\nurl = "{url}"\n')
    return subprocess.run([*CORTEX, "serve", "--config", str(tmp_path / "cortex.toml")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CORTEX_STATE_DIR": str(tmp_path / "state")})


def test_a_database_that_does_not_exist_or_a_role_refused_exits_2_saying_what_to_fix(tmp_path, postgres):  # noqa: F811
    base = postgres.url.rsplit("/", 1)[0]
    missing = start_failure(tmp_path, base + "/no_such_database")
    assert missing.returncode == 2, missing.stderr
    assert "does not exist; create that database (createdb) or fix its name in [state] url" in missing.stderr
    assert "retrying" not in missing.stderr + missing.stdout
    role = start_failure(tmp_path, base.replace("cortex@", "nobody:secret@") + "/postgres")
    assert role.returncode == 2, role.stderr
    assert "fix the user or password in [state] url" in role.stderr and "secret" not in role.stderr


def spooled_chats(client, n: int) -> int:
    """Tokens of `n` answers (each one a whole answer)."""
    return sum(chat(client, 3, stream=i % 2 == 1) for i in range(n))


def test_usage_served_during_an_outage_is_spooled_and_billed_once(tmp_path, models_dir, restartable):  # noqa: F811
    url = restartable.new_database()
    toml = f'{KEYED_TOML}\n[state]\nurl = "{url}"'
    state = tmp_path / "state"
    with start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ({"model": MODEL, "max_in_flight": 4, "max_queue_depth": 64},))
        with killed_after(start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=toml, state_dir=state)) as gateway:
            client = oai(gateway, CONFIG_KEY)
            before = spooled_chats(client, 2)  # billed in the database as it runs
            restartable.halt()
            during = spooled_chats(client, 3)  # served, the database down: spooled
            assert "the state database cannot take usage: spooling it in" in gateway.log()
            assert (state / "usage-spool.jsonl").read_text().count("\n") == 3
            restartable.start()
            wait_for(lambda: "replayed 3 spooled usage record(s)" in gateway.log(),
                     what="the rounds to bill the spool once the database is back")
            assert "3 record(s) spooled since the last replay" in gateway.log()
            assert billed(usage_of(gateway, CONFIG_KEY_NAME)) == (before + during, 5)
            restartable.halt()
            after = spooled_chats(client, 4)  # spooled again...
            gateway.kill()  # ...and the gateway killed before it could replay them
        assert (state / "usage-spool.jsonl").read_text().count("\n") == 4
        restartable.start()
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=toml, state_dir=state) as again:
            assert "replayed 4 spooled usage record(s)" in again.log(), again.log_tail()
            assert billed(usage_of(again, CONFIG_KEY_NAME)) == (before + during + after, 9)
            assert not (state / "usage-spool.jsonl").exists() and not (state / "usage-spool.jsonl.replaying").exists()
