"""The gateway's own waits go by a key's priority, with real processes: one neuron whose budget holds two of four
tiny models, both loaded ones kept busy under the `slow` fault; a low-priority key's cold load waits first, a
high-priority key's for another model after it, and the high one gets the room first. Decided by events."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import held_stream, http_json, one_node_fleet, wait_for

BUDGET = "80"  # tiny GGUFs of about 33 MiB each (estimate): two fit, never three
PATIENCE = 120
ADMIN = "admin-key-0001"


@pytest.fixture()
def four_models(tmp_path, three_models):
    d = tmp_path / "models"
    d.mkdir()
    for i in (1, 2, 3):
        shutil.copy(three_models / f"m{i}.gguf", d / f"m{i}.gguf")
    shutil.copy(three_models / "m3.gguf", d / "m4.gguf")  # a fourth model: the same weights under another name
    return d


def admin(gw, method: str, path: str, body: dict | None = None):
    return http_json(method, gw.url + "/admin" + path, body, headers={"Authorization": f"Bearer {ADMIN}"})


def make_key(gw, name: str, priority: str) -> str:
    status, body = admin(gw, "POST", "/keys", {"name": name, "priority": priority})
    assert status == 201, body
    return body["key"]


def chat(gw, key: str, model: str) -> tuple[int, dict]:
    return http_json("POST", gw.url + "/v1/chat/completions",
                     {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                     timeout=PATIENCE, headers={"Authorization": f"Bearer {key}"})


def events(gw, kind: str) -> list[dict]:
    return [e for e in admin(gw, "GET", "/status")[1]["events"] if e["kind"] == kind]


def test_a_high_priority_cold_load_gets_the_room_before_an_older_low_one(tmp_path, four_models):
    toml = f'[auth]\nadmin_keys = ["{ADMIN}"]\n[scheduling]\nmin_residency_s = 0'
    with one_node_fleet(tmp_path, four_models, "--cpu-memory-mb", BUDGET, extra_toml=toml) as (gw, neuron, _), \
            ThreadPoolExecutor(2) as pool:
        low, high = make_key(gw, "batch", "low"), make_key(gw, "interactive", "high")
        for model in ("m1", "m2"):
            assert chat(gw, high, model)[0] == 200
        streams = [held_stream(gw, neuron, m, key=high) for m in ("m1", "m2")]
        try:
            for_m3 = pool.submit(chat, gw, low, "m3")
            wait_for(lambda: [e["model"] for e in events(gw, "cold_load_waits")] == ["m3"], PATIENCE, "m3 waiting")
            for_m4 = pool.submit(chat, gw, high, "m4")
            wait_for(lambda: [e["model"] for e in events(gw, "cold_load_waits")] == ["m3", "m4"], PATIENCE,
                     "m4 waiting behind m3")
            streams.pop(0).close()  # m1 goes idle: room for one, and the high-priority load takes it
            status, body = for_m4.result(timeout=PATIENCE)
            assert status == 200, body
            assert [e["model"] for e in events(gw, "load")] == ["m1", "m2", "m4"]
        finally:
            for stream in streams:
                stream.close()
        status, body = for_m3.result(timeout=PATIENCE)  # its turn once a model idles (m2, or m4 once done)
        assert status == 200, body
        assert [e["model"] for e in events(gw, "load")] == ["m1", "m2", "m4", "m3"]
