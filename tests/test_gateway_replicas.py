"""Replicas with real processes: one tiny model that two neurons can both load, `max_replicas = 2`.

The first node's four slots are held by slow streams through the gateway (the neuron's slow fault keeps them
running until closed) and a fifth waits behind them: one waiting request per replica, the `scale_out_queue`
of 1 these tests run with, adds the replica. The tests wait (with deadlines) for what the gateway does, the
load on the second node, its unload once idle, a floor restored, requests held in the gateway while a replica
loads, never for time to pass. Which node served a request is read from the gateway's own counters. The pure
decisions are tests/test_replicas.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator

import openai
import pytest

from tests.helpers import NO_EOS, http_json, make_tiny, metric, start_gateway, start_neuron, wait_for

MODEL = "tiny"
SLOTS = 4  # a GGUF model's decoding slots on a CPU (neuron/server/catalog.py default_parallel)
PATIENCE = 90.0  # seconds a load or an unload may take on a loaded CI machine
# An idle extra replica goes after 3 s: long enough for the test to use the new replica before it goes.
SCHEDULING = "[scheduling]\nscale_out_queue = 1\nreplica_idle_s = 3"


@pytest.fixture
def models_dir(tmp_path):
    make_tiny(tmp_path / "models" / f"{MODEL}.gguf", "gguf", "--seed", "1")
    return tmp_path / "models"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def status_on(neuron) -> str | None:
    answer = http_json("GET", neuron.url + "/models")[1]
    return next((m["status"] for m in answer["models"] if m["id"] == MODEL), None)


def loaded(neuron) -> bool:
    return status_on(neuron) == "loaded"


def served(gateway, node: str) -> float:
    return metric(gateway, f'cortex_requests_total{{endpoint="chat",model="{MODEL}",node="{node}",status="200"}}')


def events(gateway, kind: str) -> list[dict]:
    return [e for e in http_json("GET", gateway.url + "/admin/status")[1]["events"] if e["kind"] == kind]


def stream(url: str, text: str):
    return client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                              max_tokens=2000, stream=True, logit_bias=NO_EOS)


@contextlib.contextmanager
def deep_queue(gateway, neuron) -> Iterator[concurrent.futures.Future]:
    """SLOTS slow streams running on `neuron` through the gateway, and one more waiting behind them (opened
    from a thread: its answer may start only when a slot frees); all closed when the block ends."""
    status, body = http_json("POST", neuron.url + "/debug/faults",
                             {"model": MODEL, "fault": "slow", "delay_ms": 200, "count": SLOTS + 1})
    assert status == 200, body
    running, pool = [], concurrent.futures.ThreadPoolExecutor(1)
    waiting = None
    try:
        for i in range(SLOTS):
            running.append(stream(gateway.url, f"hold {i}"))
            next(iter(running[-1]))  # running there, not only sent
        waiting = pool.submit(stream, gateway.url, "waiting")
        yield waiting
    finally:
        for held in running:
            held.close()
        if waiting is not None:
            with contextlib.suppress(Exception):
                waiting.result(timeout=PATIENCE).close()
        pool.shutdown()


def test_a_deep_queue_adds_a_replica_that_serves_and_goes_when_idle(tmp_path, models_dir):
    with contextlib.ExitStack() as stack:
        neurons = {name: stack.enter_context(start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000",
                                                          name=name)) for name in ("n1", "n2")}
        gateway = stack.enter_context(start_gateway(
            tmp_path, {n: p.url for n, p in neurons.items()}, extra_toml=SCHEDULING,
            models_toml=f'[[models]]\nid = "{MODEL}"\nmax_replicas = 2\n'))
        status, body = http_json("POST", gateway.url + "/admin/load", {"node": "n1", "model": MODEL})
        assert status == 200, body
        assert not loaded(neurons["n2"]), "one replica until the queue is deep"
        with deep_queue(gateway, neurons["n1"]):
            # The event comes once the gateway has the load's answer (the neuron may list it a moment before).
            wait_for(lambda: events(gateway, "scale_out"), timeout=PATIENCE, what="a replica added")
            assert loaded(neurons["n2"])
            client(gateway.url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                        max_tokens=2)
            assert served(gateway, "n2") == 1, "the new replica, the least busy, serves the next request"
            assert metric(gateway, f'cortex_replicas{{model="{MODEL}"}}') == 2
        [out] = events(gateway, "scale_out")
        assert (out["node"], out["model"], out["reason"]) == ("n2", MODEL, "queue") and out["waiting"] >= 1
        assert metric(gateway, f'cortex_scale_events_total{{direction="out",model="{MODEL}",reason="queue"}}') == 1
        # The load drops: the replica used less lately goes (n2's one request ended about when n1's streams
        # did, so either may be it), and the other remains.
        wait_for(lambda: events(gateway, "scale_in"), timeout=PATIENCE, what="one replica unloaded")
        assert sum(map(loaded, neurons.values())) == 1
        [scaled_in] = events(gateway, "scale_in")
        assert not loaded(neurons[scaled_in["node"]]) and scaled_in["reason"] == "idle" and scaled_in["idle_s"] >= 3
        assert metric(gateway, f'cortex_scale_events_total{{direction="in",model="{MODEL}",reason="idle"}}') == 1


def test_min_replicas_are_prewarmed_and_restored_after_a_neuron_restarts(tmp_path, models_dir):
    neuron = start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000")
    port = neuron.port
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: neuron.terminate())
        gateway = stack.enter_context(start_gateway(tmp_path, {"n1": neuron.url},
                                                    models_toml=f'[[models]]\nid = "{MODEL}"\nmin_replicas = 1\n'))
        wait_for(lambda: events(gateway, "restore"), timeout=PATIENCE, what="the floor pre-warmed at start")
        assert loaded(neuron)
        neuron.terminate()
        neuron = start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000", port=port)
        wait_for(lambda: loaded(neuron), timeout=PATIENCE, what="the floor restored on the restarted neuron")
        wait_for(lambda: len(events(gateway, "restore")) == 2, what="two restore events")
        assert all(e["reason"] == "min_replicas" for e in events(gateway, "restore"))
        restores = f'cortex_scale_events_total{{direction="out",model="{MODEL}",reason="min_replicas"}}'
        assert metric(gateway, restores) == 2


def test_requests_held_while_a_replica_loads_are_served_by_it(tmp_path, models_dir):
    """n1's slots held and one more queued there: that one asks for a replica on n2 (its load slowed, so
    that it is still loading when the next two come). The next two, a stream and a whole answer, find n1
    full while the replica loads: they wait in the gateway, not in n1's queue, and n2 serves both once up,
    while n1's streams still run. Sent to n1, they would wait for those streams to end."""
    with contextlib.ExitStack() as stack:
        neurons = {name: stack.enter_context(start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000",
                                                          name=name)) for name in ("n1", "n2")}
        gateway = stack.enter_context(start_gateway(
            tmp_path, {n: p.url for n, p in neurons.items()}, extra_toml="[scheduling]\nscale_out_queue = 1",
            models_toml=f'[[models]]\nid = "{MODEL}"\nmax_replicas = 2\n'))
        status, body = http_json("POST", gateway.url + "/admin/load", {"node": "n1", "model": MODEL})
        assert status == 200, body
        status, body = http_json("POST", neurons["n2"].url + "/debug/faults",
                                 {"model": MODEL, "fault": "slow_load", "delay_ms": 4000})
        assert status == 200, body
        pool = concurrent.futures.ThreadPoolExecutor(2)
        stack.callback(pool.shutdown)
        with deep_queue(gateway, neurons["n1"]):
            wait_for(lambda: status_on(neurons["n2"]) == "loading", timeout=PATIENCE, what="n2 loading a replica")
            streamed = pool.submit(lambda: "".join(c.choices[0].delta.content or "" for c in
                                                   client(gateway.url).chat.completions.create(
                                                       model=MODEL, messages=[{"role": "user", "content": "s"}],
                                                       max_tokens=3, stream=True) if c.choices))
            whole = pool.submit(client(gateway.url).chat.completions.create, model=MODEL,
                                messages=[{"role": "user", "content": "w"}], max_tokens=3)
            wait_for(lambda: gateway.log().count("wait in the gateway while a replica") >= 1, timeout=PATIENCE,
                     what="requests held in the gateway")
            streamed.result(timeout=PATIENCE)
            assert whole.result(timeout=PATIENCE).choices[0].message is not None
            # A stream's record is written as its handler ends, a moment after the client has read it all.
            wait_for(lambda: served(gateway, "n2") == 2, what="both held requests served by the new replica")
            assert served(gateway, "n1") == 0, "n1's streams (and the one queued behind them) still run"
        [out] = events(gateway, "scale_out")
        assert (out["node"], out["reason"]) == ("n2", "queue")
