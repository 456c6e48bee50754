"""Two real gateways on one real PostgreSQL share what an operator sets (issue 25, items 1 and 2): a drain and
a pin made through one are honoured by the other, and a key made or revoked through one holds on the other at
once (the other is told by NOTIFY, and says so in its log). Skipped, saying why, without PostgreSQL
(tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import openai
import pytest

from cortex_gateway.state_db import StateDB
from cortex_gateway.state_db.migrations import LATEST
from cortex_gateway.state_db.script import rows
from tests.helpers import http_json, load_models, start_gateway, start_neuron, wait_for
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_budgets_gateway import AUTH_TOML, MODEL, admin, chat, make_key, oai

NODES = ("n1", "n2")
TOLD_KEYS = "another gateway changed the keys: read them afresh"  # the gateways' log, after a NOTIFY
TOLD_ADMIN = "another gateway changed the pins or drains: read them afresh"


@pytest.fixture(scope="module")
def neurons(tmp_path_factory, models_dir):
    """Two neurons with the model loaded on each."""
    root = tmp_path_factory.mktemp("shared")
    with contextlib.ExitStack() as stack:
        urls = {}
        for name in NODES:
            (root / name).mkdir()
            neuron = stack.enter_context(start_neuron(root / name, models_dir, "--cpu-memory-mb", "4000", name=name))
            load_models(neuron, ({"model": MODEL, "max_in_flight": 4, "max_queue_depth": 64},))
            urls[name] = neuron.url
        yield urls


@contextlib.contextmanager
def two_gateways(tmp_path, neurons, url):
    toml = f'{AUTH_TOML}\n[state]\nurl = "{url}"'
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
    # Started together on a fresh database: both migrate it at once (one waits on the advisory lock).
    with start_gateway(tmp_path / "a", neurons, extra_toml=toml, state_dir=tmp_path / "sa", wait=False) as a, \
            start_gateway(tmp_path / "b", neurons, extra_toml=toml, state_dir=tmp_path / "sb", wait=False) as b:
        a.wait_healthy()
        b.wait_healthy()
        yield a, b


def status(gateway) -> dict:
    code, body = admin(gateway, "GET", "/status")
    assert code == 200, body
    return body


def draining(gateway, node: str) -> bool:
    return next(n for n in status(gateway)["nodes"] if n["name"] == node)["draining"]


def served_on(gateway, node: str) -> float:
    """Requests this gateway sent to `node`, from its own metrics."""
    text = urllib.request.urlopen(gateway.metrics_url).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("cortex_requests_total{") and f'node="{node}"' in line)


def test_a_drain_and_a_pin_made_through_one_gateway_hold_on_the_other(tmp_path, neurons, postgres_url):  # noqa: F811
    with two_gateways(tmp_path, neurons, postgres_url) as (a, b):
        code, body = admin(a, "POST", "/drain", {"node": "n1"})
        assert code == 200 and body["draining"] is True, body
        wait_for(lambda: draining(b, "n1"), what="b to see n1 drained")
        wait_for(lambda: TOLD_ADMIN in b.log(), what="b told of the drain (NOTIFY), not only at its next round")
        a_id = (tmp_path / "sa" / "gateway_id").read_text().strip()
        wait_for(lambda: {"kind": "drain", "node": "n1", "gateway": a_id}.items() <= next(
            (e for e in reversed(status(b)["events"]) if e["kind"] == "drain"), {}).items(),
            what="a's drain in the event log b shows")
        before = {node: served_on(b, node) for node in NODES}
        client = oai(b, "unused")  # no key exists yet: the API is open
        for _ in range(4):
            assert isinstance(chat(client, 4, stream=False), int)
        assert served_on(b, "n1") == before["n1"], "b sent nothing to the node drained through a"
        assert served_on(b, "n2") == before["n2"] + 4
        code, _ = admin(b, "POST", "/undrain", {"node": "n1"})
        assert code == 200
        wait_for(lambda: not draining(a, "n1"), what="a to see n1 undrained through b")

        code, _ = admin(a, "POST", "/pin", {"node": "n2", "model": MODEL})
        assert code == 200
        wait_for(lambda: status(b)["pins"] == {MODEL: ["n2"]}, what="b to see the pin made through a")
        code, _ = admin(b, "POST", "/unpin", {"node": "n2", "model": MODEL})
        assert code == 200
        wait_for(lambda: status(a)["pins"] == {}, what="a to see the unpin made through b")


def test_a_key_made_and_revoked_through_one_gateway_holds_on_the_other_at_once(tmp_path, neurons,
                                                                               postgres_url):  # noqa: F811
    with two_gateways(tmp_path, neurons, postgres_url) as (a, b):
        assert http_json("GET", b.url + "/v1/models")[0] == 200  # no key anywhere: open
        name, key = make_key(a)
        # b was told of the key by NOTIFY: keyed from then on, not at its next five-second refresh.
        wait_for(lambda: TOLD_KEYS in b.log(), what="b told of the new key")
        assert http_json("GET", b.url + "/v1/models")[0] == 401
        assert isinstance(chat(oai(b, key), 4, stream=False), int)
        code, _ = admin(a, "DELETE", f"/keys/{name}")
        assert code == 200
        wait_for(lambda: b.log().count(TOLD_KEYS) >= 2, what="b told of the revocation")
        assert http_json("GET", b.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})[0] == 401
        assert admin(b, "GET", "/keys")[0] == 200  # the admin key (the config file's) still works


def test_a_response_stored_through_one_gateway_is_found_and_deleted_through_the_other(tmp_path, neurons,
                                                                                      postgres_url):  # noqa: F811
    with two_gateways(tmp_path, neurons, postgres_url) as (a, b):
        _, key = make_key(a)
        through_a, through_b = oai(a, key), oai(b, key)
        first = through_a.responses.create(model=MODEL, input="hi", max_output_tokens=4)
        follow_up = through_b.responses.create(model=MODEL, input="and then?", max_output_tokens=4,
                                               previous_response_id=first.id)
        assert follow_up.previous_response_id == first.id
        events = list(through_b.responses.create(model=MODEL, input="more", max_output_tokens=4, stream=True,
                                                 previous_response_id=follow_up.id))
        streamed = next(e.response for e in events if e.type in ("response.completed", "response.incomplete"))
        # committed before the stream's end reached the client: found through the other gateway at once
        assert through_a.responses.retrieve(streamed.id).previous_response_id == follow_up.id
        assert through_b.responses.retrieve(first.id).id == first.id
        _, other = make_key(b)  # another key's responses are not this one's, on either gateway
        with pytest.raises(openai.NotFoundError):
            oai(a, other).responses.retrieve(first.id)
        through_b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            through_a.responses.retrieve(first.id)  # a held it in memory: the database's word wins


def test_two_gateways_started_together_on_a_fresh_database_migrate_it_once(tmp_path, neurons,
                                                                           postgres_url):  # noqa: F811
    with two_gateways(tmp_path, neurons, postgres_url) as (a, b):
        migrated = [g for g in (a, b) if "migrated to schema version" in g.log()]
        assert len(migrated) == 1, "one migrated; the other waited on the lock and found it done"
        versions = asyncio.run(_versions(postgres_url))
        assert versions == list(range(1, LATEST + 1))


async def _versions(url: str) -> list[int]:
    db = await StateDB.open(url, None, "test-reader")
    try:
        return await db._driver.read(lambda: _select_versions())
    finally:
        await db.close()


def _select_versions():
    found = yield rows("SELECT version FROM schema_migrations ORDER BY version")
    return [int(v) for (v,) in found]
