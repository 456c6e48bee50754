"""Keep-alive (cortex_gateway/keep_alive.py): its decisions over snapshots, table-driven; its config; and
its rounds carried out by the gateway's real app over fake neurons, on a clock the test sets.

The real-process check (tiny models, a neuron's slow fault) is tests/test_gateway_keep_alive.py.
"""

from __future__ import annotations

import asyncio

import pytest

from cortex_gateway.config import ConfigError, ModelProfile, load_config
from cortex_gateway.keep_alive import (
    MIN_WAKE_S,
    IdleUnload,
    KeepAlive,
    first_seen,
    idle_from,
    idle_unloads,
    keep_alive_for,
    wake_interval,
)
from cortex_gateway.router import NodeView
from cortex_gateway.state import FLEET, LIFECYCLE
from tests.gateway_inprocess import OPENAI, open_stream, rest, wait

NOW = 1000.0


def N(name="n1", loaded=("a",), used=None, busy=None, healthy=True):
    """A node with `loaded` models (10 MiB each), last used at `used` (model -> time, 0 when absent)."""
    return NodeView(name, healthy, 100.0, {m: 10.0 for m in loaded}, busy=busy or {}, last_used=used or {})


@pytest.mark.parametrize("snapshot, keep_alive, default, pinned, expected", [
    # idle 60 s against a keep-alive of 30: unloaded; of 90: kept
    ([N(used={"a": NOW - 60})], {"a": 30}, None, {}, [("n1", "a")]),
    ([N(used={"a": NOW - 60})], {"a": 90}, None, {}, []),
    ([N(used={"a": NOW - 30})], {"a": 30}, None, {}, [("n1", "a")]),  # exactly its keep-alive: due
    # the default applies to models without their own, models.toml or not; a model's own wins either way
    ([N(loaded=("a", "b"), used={"a": NOW - 60, "b": NOW - 60})], {}, 30, {}, [("n1", "a"), ("n1", "b")]),
    ([N(used={"a": NOW - 60})], {"a": None}, 30, {}, [("n1", "a")]),
    ([N(used={"a": NOW - 60})], {"a": 90}, 30, {}, []),
    ([N(used={"a": NOW - 60})], {"a": 30}, 90, {}, [("n1", "a")]),
    # 0 or absent everywhere: never unloaded for idleness, however long idle
    ([N(used={"a": 1.0})], {"a": 0}, 30, {}, []),
    ([N(used={"a": 1.0})], {}, None, {}, []),
    ([N(used={"a": 1.0})], {}, 0, {}, []),
    # busy through the gateway, pinned on this node, or a node down: kept
    ([N(used={"a": 1.0}, busy={"a": 1})], {}, 30, {}, []),
    ([N(used={"a": 1.0})], {}, 30, {"a": {"n1"}}, []),
    ([N(used={"a": 1.0})], {}, 30, {"a": {"n2"}}, [("n1", "a")]),  # pinned elsewhere: not here
    ([N(used={"a": 1.0}, healthy=False)], {}, 30, {}, []),
    # per node: idle on one, used lately on the other
    ([N("n1", used={"a": NOW - 60}), N("n2", used={"a": NOW - 5})], {"a": 30}, None, {}, [("n1", "a")]),
])
def test_idle_unloads(snapshot, keep_alive, default, pinned, expected):
    got = idle_unloads(snapshot, keep_alive, default, pinned, NOW)
    assert [(d.node, d.model) for d in got] == expected


def test_a_decision_says_how_long_the_model_was_idle():
    assert idle_unloads([N(used={"a": NOW - 61.5})], {"a": 30}, None, {}, NOW) == [IdleUnload("n1", "a", 61.5)]


@pytest.mark.parametrize("model, keep_alive, default, expected", [
    ("a", {"a": 10.0}, 300.0, 10.0), ("a", {"a": 0.0}, 300.0, 0.0), ("a", {"a": None}, 300.0, 300.0),
    ("b", {"a": 10.0}, 300.0, 300.0), ("b", {}, None, 0.0), ("b", {}, 0.0, 0.0),
])
def test_keep_alive_for(model, keep_alive, default, expected):
    assert keep_alive_for(model, keep_alive, default) == expected


@pytest.mark.parametrize("keep_alive, default, expected", [
    ({}, None, None), ({}, 0.0, None), ({"a": 0.0, "b": None}, 0.0, None),  # nothing to keep alive: no rounds
    ({"a": 8.0}, 0.0, 2.0), ({"a": 8.0}, 300.0, 2.0), ({"a": 0.0}, 300.0, 75.0),
    ({"a": 0.1}, None, MIN_WAKE_S),
])
def test_wake_interval(keep_alive, default, expected):
    assert wake_interval(keep_alive, default) == expected


def test_a_model_never_used_counts_from_when_the_gateway_first_saw_it():
    """Loaded before the gateway started (its last use 0): idle from the first round that saw it, not 1970."""
    seen = first_seen([N(loaded=("a", "b"), used={"b": NOW + 5})], {}, NOW)
    assert seen == {("n1", "a"): NOW, ("n1", "b"): NOW}
    later = first_seen([N(loaded=("a",))], seen, NOW + 10)
    assert later == {("n1", "a"): NOW}, "kept from the first sighting; b, gone, is forgotten"
    view = idle_from([N(loaded=("a", "b"), used={"b": NOW + 5})], seen)[0]
    assert view.last_used == {"a": NOW, "b": NOW + 5}, "the later of the two"
    assert idle_unloads([view], {}, 30, {}, NOW + 29) == []
    assert [d.model for d in idle_unloads([view], {}, 30, {}, NOW + 30)] == ["a"]


# -- config ---------------------------------------------------------------------------
def write(tmp_path, cortex: str, models: str = "") -> object:
    (tmp_path / "models.toml").write_text(models)
    (tmp_path / "cortex.toml").write_text(f'models_config = "models.toml"\n{cortex}\n')
    return load_config(tmp_path / "cortex.toml")


def test_config_reads_the_default_and_each_models_keep_alive(tmp_path):
    cfg = write(tmp_path, "[scheduling]\nkeep_alive_s = 300", '[[models]]\nid = "a"\nkeep_alive_s = 0\n'
                '[[models]]\nid = "b"\nkeep_alive_s = 1.5\n[[models]]\nid = "c"\n')
    assert cfg.scheduling.keep_alive_s == 300
    assert {m: p.keep_alive_s for m, p in cfg.models.items()} == {"a": 0, "b": 1.5, "c": None}
    assert write(tmp_path, "").scheduling.keep_alive_s == 0, "off unless configured"


@pytest.mark.parametrize("cortex, models, says", [
    ("[scheduling]\nkeep_alive_s = -1", "", "cortex.toml: [scheduling].keep_alive_s: expected a number of "
     "seconds >= 0, got -1"),
    ("[scheduling]\nkeep_alive_s = \"5m\"", "", "[scheduling].keep_alive_s: expected a number of seconds >= 0"),
    ("", '[[models]]\nid = "a"\nkeep_alive_s = -5', "models.toml: [[models]] #1.keep_alive_s: expected a "
     "number of seconds >= 0, got -5"),
    ("", '[[models]]\nid = "a"\nkeep_alive_s = nan', "[[models]] #1.keep_alive_s: expected a number"),
])
def test_config_refuses_bad_keep_alives_naming_the_key(tmp_path, cortex, models, says):
    with pytest.raises(ConfigError) as err:
        write(tmp_path, cortex, models)
    assert says in str(err.value)


# -- rounds, in process over fake neurons --------------------------------------------------
class Clock:
    def __init__(self, start: float):
        self.t = start

    def __call__(self) -> float:
        return self.t


async def keep_alive_over(gateway_over, fakes, loaded: dict, **config):
    """(gateway, fake n1 holding `loaded`, a KeepAlive on a clock the test moves) over the gateway's app."""
    fake = await fakes.start("n1", loaded=loaded)
    gw = await gateway_over(fake, **config)
    clock = Clock(1e9)  # far from time.time(): only this clock decides
    keep_alive = KeepAlive(gw.client.app[LIFECYCLE], now=clock)
    return gw, fake, keep_alive, clock


def profiles(**keep_alive):
    return {m: ModelProfile(m, keep_alive_s=v) for m, v in keep_alive.items()}


async def test_a_round_unloads_with_if_idle_and_records_it(gateway_over, fakes):
    gw, fake, keep_alive, clock = await keep_alive_over(gateway_over, fakes, {"a": 10.0, "b": 10.0, "c": 10.0},
                                                        models=profiles(a=30.0, b=0.0, c=30.0))
    gw.client.app[LIFECYCLE].pins["c"] = {"n1"}
    await keep_alive.round()  # the first sighting: idle from now on
    clock.t += 29
    await keep_alive.round()
    assert fake.unloads == []
    clock.t += 1
    await keep_alive.round()
    assert fake.unloads == [{"model": "a", "if_idle": True}], "b has keep-alive 0, c is pinned"
    assert set(fake.loaded) == {"b", "c"}
    assert gw.metric('cortex_unloads_total{model="a",node="n1",reason="keep_alive"}') == 1
    event = gw.client.app[FLEET].events[-1]
    assert (event["kind"], event["node"], event["model"], event["idle_s"]) == ("keep_alive_unload", "n1", "a", 30)
    status = await (await gw.client.get("/admin/status")).json()
    assert status["events"][-1]["kind"] == "keep_alive_unload"


async def test_a_request_in_flight_keeps_its_model_and_idle_counts_from_its_end(gateway_over, fakes):
    gw, fake, keep_alive, clock = await keep_alive_over(gateway_over, fakes, {"a": 10.0}, models=profiles(a=30.0))
    await keep_alive.round()  # the first sighting, long before the request
    held = fake.hold_headers()
    stream = asyncio.ensure_future(open_stream(gw, OPENAI, "a"))
    await wait(held.arrived)
    started = gw.client.app[FLEET].usage_of("n1", "a").last_used
    clock.t = started + 3600
    await keep_alive.round()
    assert fake.unloads == [], "in flight through the gateway: not even asked"
    held.release()
    await rest(await stream)
    ended = gw.client.app[FLEET].usage_of("n1", "a").last_used
    assert ended >= started, "a request's end is a use too: idle from then"
    clock.t = ended + 29
    await keep_alive.round()
    assert fake.unloads == []
    clock.t = ended + 30
    await keep_alive.round()
    assert [u["model"] for u in fake.unloads] == ["a"]


async def test_a_model_busy_from_elsewhere_is_refused_and_asked_again(gateway_over, fakes):
    """The node refuses (409 model_busy): not an error, nothing recorded, the next round asks again."""
    gw, fake, keep_alive, clock = await keep_alive_over(gateway_over, fakes, {"a": 10.0}, models=profiles(a=1.0))
    fake.busy.add("a")
    await keep_alive.round()
    clock.t += 5
    await keep_alive.round()
    assert fake.unloads == [{"model": "a", "if_idle": True}] and "a" in fake.loaded
    assert gw.metric('cortex_unloads_total{model="a",node="n1",reason="keep_alive"}') == 0
    assert all(e["kind"] != "keep_alive_unload" for e in gw.client.app[FLEET].events)
    fake.busy.discard("a")
    await keep_alive.round()
    assert len(fake.unloads) == 2 and "a" not in fake.loaded


async def test_the_app_runs_rounds_only_when_a_model_has_a_keep_alive(gateway_over, fakes):
    """The task beside the poller: with a keep-alive it unloads by itself (real clock, polled with a deadline);
    without one no task runs (asserted by the tasks of the app's loop)."""
    fake = await fakes.start("n1", loaded={"a": 10.0})
    await gateway_over(fake)
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "KeepAlive.run"]
    fake2 = await fakes.start("n2", loaded={"a": 10.0})
    await gateway_over(fake2, models=profiles(a=0.01))
    async with asyncio.timeout(10):
        while "a" in fake2.loaded:
            await asyncio.sleep(0.05)
    assert [u["model"] for u in fake2.unloads] == ["a"]
