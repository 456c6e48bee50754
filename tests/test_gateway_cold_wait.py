"""A cold load whose room is held by busy models waits for one to idle, with real processes: one neuron whose
budget holds two of three tiny models, both loaded ones kept busy by streams through the gateway under the
neuron's `slow` fault. Decided by events (the gateway's `cold_load_waits`, a stream ended), not by the clock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from tests.helpers import held_stream, http_json, one_node_fleet, wait_for

BUDGET = "80"  # three tiny GGUFs of about 33 MiB each (estimate): two fit, never three
PATIENCE = 120  # the most any step may take on a slow machine before the test fails


def chat(gateway, model: str) -> tuple[int, dict]:
    return http_json("POST", gateway.url + "/v1/chat/completions",
                     {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                     timeout=PATIENCE)


def waits_for(gateway, model: str) -> bool:
    events = http_json("GET", gateway.url + "/admin/status")[1]["events"]
    return any(e["kind"] == "cold_load_waits" and e["model"] == model for e in events)


def loaded(neuron) -> set[str]:
    return {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


@contextlib.contextmanager
def crowded(tmp_path, models_dir, extra_toml: str = "") -> Iterator[tuple]:
    """(gateway, neuron, streams): m1 and m2 loaded and busy; the streams closed however the block ends."""
    with one_node_fleet(tmp_path, models_dir, "--cpu-memory-mb", BUDGET, extra_toml=extra_toml) as (gw, neuron, _):
        for model in ("m1", "m2"):
            assert chat(gw, model)[0] == 200
        streams = {}
        try:
            for model in ("m1", "m2"):
                streams[model] = held_stream(gw, neuron, model)
            yield gw, neuron, streams
        finally:
            for stream in streams.values():
                stream.close()


def test_a_cold_load_waits_for_a_busy_model_to_idle(tmp_path, three_models):
    with crowded(tmp_path, three_models) as (gw, neuron, streams), ThreadPoolExecutor(1) as pool:
        asking: Future = pool.submit(chat, gw, "m3")
        wait_for(lambda: waits_for(gw, "m3"), PATIENCE, "cold_load_waits event for m3")
        assert not asking.done()  # no 503: it waits while both models are busy
        assert loaded(neuron) == {"m1", "m2"}
        streams.pop("m1").close()  # m1's request ends: it is idle, and can make room
        status, body = asking.result(timeout=PATIENCE)
        assert status == 200, body
        assert loaded(neuron) == {"m2", "m3"}  # m2 is still busy: m1 went


def test_the_wait_ends_at_max_wait_s_with_a_503_naming_it(tmp_path, three_models):
    with crowded(tmp_path, three_models, extra_toml="[scheduling]\nmax_wait_s = 2") as (gw, neuron, _):
        status, body = chat(gw, "m3")
        assert status == 503, body
        assert body["error"]["code"] == "no_capacity"
        assert "waited 2s ([scheduling] max_wait_s)" in body["error"]["message"], body
        assert waits_for(gw, "m3")
        assert loaded(neuron) == {"m1", "m2"}


def test_a_model_too_big_for_every_node_is_refused_at_once(tmp_path, three_models):
    """Nothing to wait for: the figures, in a non-retryable 422, with nothing evicted or loaded."""
    with one_node_fleet(tmp_path, three_models, "--cpu-memory-mb", "20") as (gw, neuron, _):
        status, body = chat(gw, "m1")
        assert status == 422, body
        assert body["error"]["code"] == "model_too_large"
        assert "more than any node can hold: the roomiest, n1, has 20 MiB in all" in body["error"]["message"]
        assert not waits_for(gw, "m1") and loaded(neuron) == set()


def summary(gateway, model: str) -> dict:
    models = http_json("GET", gateway.url + "/admin/status")[1]["models"]
    return next(m for m in models if m["id"] == model)


def events(gateway, kind: str) -> list[dict]:
    return [e for e in http_json("GET", gateway.url + "/admin/status")[1]["events"] if e["kind"] == kind]


def test_interleaved_demand_swaps_by_turns_not_per_request(tmp_path, three_models):
    """Three models on a node that holds two, each asked for while the others are busy: a waiting load claims the
    least lately used busy model (which takes no new requests until swapped), the requests for each model share
    one load, and the swap keeps the node's working set for its residency: the model just evicted waits its
    turn even once both residents are idle (here past max_wait_s, so it is told so), instead of swapping back."""
    toml = "[scheduling]\nmin_residency_s = 600\nmax_wait_s = 15"
    with crowded(tmp_path, three_models, extra_toml=toml) as (gw, neuron, streams), ThreadPoolExecutor(6) as pool:
        for_m3 = [pool.submit(chat, gw, "m3") for _ in range(3)]
        wait_for(lambda: waits_for(gw, "m3"), PATIENCE, "cold_load_waits event for m3")
        # m3's load claimed m1, the least lately used busy model: a new request for m1 waits for its return.
        for_m1 = [pool.submit(chat, gw, "m1") for _ in range(2)]
        wait_for(lambda: waits_for(gw, "m1"), PATIENCE, "cold_load_waits event for m1")
        # /admin/status (and `cortex status`) shows the queue: m3's three requests, m1 yielding on n1, its two.
        wait_for(lambda: (summary(gw, "m3")["waiting_for_room"], summary(gw, "m1")["waiting_for_room"]) == (3, 2),
                 PATIENCE, "m3's 3 and m1's 2 requests waiting for room")
        assert summary(gw, "m1")["yielding"] == ["n1"] and summary(gw, "m3")["replicas"] == []
        assert not any(f.done() for f in for_m3 + for_m1)
        streams.pop("m1").close()  # m1 drains: m3's turn
        assert [f.result(timeout=PATIENCE)[0] for f in for_m3] == [200] * 3
        assert loaded(neuron) == {"m2", "m3"}
        assert chat(gw, "m3")[0] == 200  # served by the resident m3 at once
        streams.pop("m2").close()  # both residents idle now, but the swap keeps them for its residency
        for status, body in (f.result(timeout=PATIENCE) for f in for_m1):
            assert status == 503, body
            assert "waited 15s ([scheduling] max_wait_s)" in body["error"]["message"], body
        assert loaded(neuron) == {"m2", "m3"}
        assert [e["model"] for e in events(gw, "load")] == ["m1", "m2", "m3"]
        assert [e["model"] for e in events(gw, "cold_load_waits")] == ["m3", "m1"]


def test_a_model_a_profile_loads_by_path_is_evicted_by_its_path(tmp_path, three_models):
    """The node knows a profile's model by its path, the gateway by the profile's id: evicting it for room
    asks the node for the path (asking by the id was a 404, and the cold load behind it failed)."""
    profile = f'[[models]]\nid = "bypath"\npath = "{three_models / "m1.gguf"}"\n'
    with one_node_fleet(tmp_path, three_models, "--cpu-memory-mb", BUDGET, models_toml=profile) as (gw, neuron, _):
        for model in ("bypath", "m2", "m3"):  # the third evicts the least lately used: bypath
            status, body = chat(gw, model)
            assert status == 200, body
        assert [(e["model"]) for e in events(gw, "evict")] == ["bypath"]
        assert not any("m1" in model for model in loaded(neuron))


def test_a_claim_that_ends_unplaced_lets_the_yielding_model_serve_again(tmp_path, three_models):
    """m3's wait claims m1, so a request for m1 waits for its return; m3 gives up at max_wait_s, its claim with
    it, and the request for m1 is served by m1, still loaded (not loaded a second time, nor refused)."""
    with crowded(tmp_path, three_models, extra_toml="[scheduling]\nmax_wait_s = 3") as (gw, neuron, _), \
            ThreadPoolExecutor(2) as pool:
        for_m3 = pool.submit(chat, gw, "m3")
        wait_for(lambda: waits_for(gw, "m3"), PATIENCE, "cold_load_waits event for m3")
        for_m1 = pool.submit(chat, gw, "m1")
        wait_for(lambda: waits_for(gw, "m1"), PATIENCE, "cold_load_waits event for m1")
        assert for_m3.result(timeout=PATIENCE)[0] == 503
        status, body = for_m1.result(timeout=PATIENCE)
        assert status == 200, body
        assert loaded(neuron) == {"m1", "m2"}
        assert [e["model"] for e in events(gw, "load")] == ["m1", "m2"]


def test_two_cold_loads_at_once_for_room_enough_for_one_both_are_served(tmp_path, three_models):
    """m1 busy, room for one more model, m2 and m3 asked for together: one loads, the other waits (its plan
    counts the room the first load takes, and a node's 507 while busy models hold the rest is a wait, not a
    503) and is served once m1's request ends."""
    with one_node_fleet(tmp_path, three_models, "--cpu-memory-mb", BUDGET) as (gw, neuron, _), \
            ThreadPoolExecutor(2) as pool:
        assert chat(gw, "m1")[0] == 200
        stream = held_stream(gw, neuron, "m1")
        try:
            asked = [pool.submit(chat, gw, m) for m in ("m2", "m3")]
            wait_for(lambda: len(events(gw, "cold_load_waits")) == 1, PATIENCE, "one of the two loads waiting")
            assert sum(f.done() for f in asked) <= 1
        finally:
            stream.close()
        assert [f.result(timeout=PATIENCE)[0] for f in asked] == [200, 200]
        assert len(events(gw, "load")) == 3 and len(events(gw, "evict")) == 1
