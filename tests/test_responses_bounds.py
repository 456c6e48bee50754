"""What the Responses store may keep (issue 20, finding 4): bytes no model reads are bounded.

Input item ids, `call_id`s and the echoed identifiers (`user`, `safety_identifier`,
`prompt_cache_key`) are dropped before the neuron, so no context check ever sees them; they are
bounded as OpenAI bounds them, with OpenAI's own error. The store itself is bounded in bytes:
in total (the oldest unused response goes first) and per response (refused before the answer
when what is known already exceeds it). The gateway's real app over a fake neuron, and the store
alone with a given clock.
"""

from __future__ import annotations

import pytest

from cortex_gateway.config import GatewayConfig, load_config
from cortex_gateway.responses.store import ResponseStore, StoredResponse
from cortex_gateway.state import RESPONSE_STORE
from neuron.shared.config import ConfigError

MIB = 2**20


@pytest.fixture
def gateway(fakes, gateway_over):
    """`await gateway(**limits)`: the gateway's test client over a fake neuron with `m` loaded."""

    async def start(**limits):
        return (await gateway_over(await fakes.start("n1", loaded={"m": 100}), **limits)).client

    return start


def message(text: str, **extra) -> dict:
    return {"type": "message", "role": "user", "content": text, **extra}


LONG_FIELDS = [
    ({"input": [message("hi", id="x" * 65)]}, "input[0].id", 64),
    ({"input": [message("hi"), {"type": "function_call", "call_id": "c" * 65, "name": "f", "arguments": "{}"}]},
     "input[1].call_id", 64),
    ({"input": [{"type": "function_call_output", "call_id": "c" * 65, "output": "ok"}]}, "input[0].call_id", 64),
    ({"input": [{"type": "function_call", "id": "i" * 65, "call_id": "c", "name": "f", "arguments": "{}"}]},
     "input[0].id", 64),
    ({"input": "hi", "user": "u" * 65}, "user", 64),
    ({"input": "hi", "prompt_cache_key": "k" * 65}, "prompt_cache_key", 64),
    ({"input": "hi", "safety_identifier": "s" * 129}, "safety_identifier", 128),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "n" * 65, "schema": {"type": "object"}}}},
     "text.format.name", 64),
]


@pytest.mark.parametrize("extra, param, limit", LONG_FIELDS, ids=[p for _, p, _ in LONG_FIELDS])
async def test_fields_no_model_reads_are_bounded_as_openai_bounds_them(gateway, extra, param, limit):
    client = await gateway()
    resp = await client.post("/v1/responses", json={"model": "m", **extra})
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["param"] == param and err["code"] == "string_above_max_length"
    assert err["message"] == (f"Invalid '{param}': string too long. Expected a string with maximum length "
                              f"{limit}, but got a string with length {limit + 1} instead.")
    assert len(client.server.app[RESPONSE_STORE]) == 0


async def test_fields_at_the_limit_are_kept_and_echoed(gateway):
    client = await gateway()
    body = {"model": "m", "input": [message("hi", id="x" * 64)], "user": "u" * 64, "prompt_cache_key": "k" * 64,
            "safety_identifier": "s" * 128}
    resp = await client.post("/v1/responses", json=body)
    assert resp.status == 200, await resp.text()
    made = await resp.json()
    assert (made["user"], made["safety_identifier"]) == ("u" * 64, "s" * 128)
    items = await (await client.get(f"/v1/responses/{made['id']}/input_items")).json()
    assert items["data"][0]["id"] == "x" * 64


async def test_the_store_stays_under_its_total_in_bytes(gateway):
    """Each response holds ~40 KB of conversation; the store holds 0.1 MiB: the oldest go first, the
    newest (what a follow-up continues) stays."""
    client = await gateway(responses_store_max_mb=0.1, responses_store_max_response_mb=0.05)
    store = client.server.app[RESPONSE_STORE]
    ids = []
    for i in range(8):
        resp = await client.post("/v1/responses", json={"model": "m", "input": f"{i} " + "w" * 40_000})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["id"])
        assert store.bytes <= 0.1 * MIB
    assert 0 < len(store) < 8
    assert (await client.get(f"/v1/responses/{ids[-1]}")).status == 200
    assert (await client.get(f"/v1/responses/{ids[0]}")).status == 404
    follow = await client.post("/v1/responses", json={"model": "m", "input": "more", "previous_response_id": ids[-1]})
    assert follow.status == 200


async def test_a_response_over_the_per_response_bound_is_refused_before_it_runs(gateway):
    client = await gateway(responses_store_max_response_mb=0.01)
    resp = await client.post("/v1/responses", json={"model": "m", "input": "w" * 20_000})
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "response_too_large" and err["param"] == "input"
    assert "responses_store_max_response_mb" in err["message"] and "store: false" in err["message"]
    unstored = await client.post("/v1/responses", json={"model": "m", "input": "w" * 20_000, "store": False})
    assert unstored.status == 200, await unstored.text()
    assert len(client.server.app[RESPONSE_STORE]) == 0


# -- the store alone ------------------------------------------------------------------------
def entry(text: str) -> StoredResponse:
    return StoredResponse({"id": "r", "output": []}, [], [{"type": "message", "content": text}])


def test_store_evicts_oldest_unused_to_stay_under_its_bytes():
    size = ResponseStore.size_of(entry("x" * 1000))
    store = ResponseStore(100, 60, max_bytes=3 * size, max_response_bytes=2 * size)
    for name in "abc":
        assert store.put(name, entry("x" * 1000))
    assert store.get("a") is not None  # a is now the most recently used: b goes first
    assert store.put("d", entry("x" * 1000))
    assert store.get("b") is None and all(store.get(n) for n in "acd") and store.bytes == 3 * size
    store.delete("a")
    assert store.bytes == 2 * size


def test_store_refuses_one_response_over_its_bound_and_keeps_the_rest():
    small = ResponseStore.size_of(entry("x"))
    store = ResponseStore(100, 60, max_bytes=10 * MIB, max_response_bytes=small + 10)
    assert store.put("a", entry("x"))
    assert not store.put("b", entry("x" * 100))
    assert store.get("b") is None and store.get("a") is not None and store.bytes == small


def test_store_bytes_follow_expiry():
    now = [0.0]
    store = ResponseStore(100, 60, lambda: now[0], max_bytes=MIB, max_response_bytes=MIB)
    store.put("a", entry("x"))
    now[0] = 61
    assert len(store) == 0 and store.bytes == 0


@pytest.mark.parametrize("line, named", [
    ("responses_store_max_mb = 0", "responses_store_max_mb"),
    ("responses_store_max_response_mb = -1", "responses_store_max_response_mb"),
    ('responses_store_max_mb = "lots"', "responses_store_max_mb"),
    ("responses_store_max_mb = 8\nresponses_store_max_response_mb = 16", "responses_store_max_response_mb"),
])
def test_store_byte_bounds_in_the_config_are_checked(tmp_path, line, named):
    path = tmp_path / "cortex.toml"
    path.write_text(f"[gateway]\n{line}\n")
    with pytest.raises(ConfigError, match=named):
        load_config(path)
    path.write_text("[gateway]\nresponses_store_max_mb = 64\nresponses_store_max_response_mb = 4\n")
    config = load_config(path)
    assert (config.responses_store_max_mb, config.responses_store_max_response_mb) == (64.0, 4.0)
    assert GatewayConfig().responses_store_max_mb == 256 and GatewayConfig().responses_store_max_response_mb == 16
