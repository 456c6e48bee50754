"""Prefix-affine routing: the score (cortex_gateway/affinity.py), the prefix map and a request's keys
(cortex_gateway/prefix_map.py), the router and lifecycle over them, and the config keys; no sockets.

The real-process check (two neurons with the same tiny model) is tests/test_prefix_affinity.py.
"""

from __future__ import annotations

import orjson
import pytest

from cortex_gateway.affinity import Choice, pick
from cortex_gateway.config import ConfigError, GatewayConfig, NeuronSpec, Scheduling, load_config
from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.prefix_map import CHUNK_CHARS, PrefixMap, RequestKeys, prompt_blocks
from cortex_gateway.router import Affinity, NodeView, route_loaded
from neuron.shared.protocol import ModelInfo


@pytest.mark.parametrize("busy, depths, hinted, margin, expected", [
    ({"a": 0, "b": 0}, {}, None, 4, Choice("a", "least busy")),  # today's behaviour, ties by name
    ({"a": 3, "b": 1}, {}, None, 4, Choice("b", "least busy")),
    ({"a": 3, "b": 1}, {"a": 3}, None, 4, Choice("a", "prefix 3 blocks")),
    ({"a": 0, "b": 0}, {"b": 1}, None, 4, Choice("b", "prefix 1 block")),
    ({"a": 6, "b": 1}, {"a": 3}, None, 4, Choice("b", "prefix 3 blocks on a but busier by 5")),
    ({"a": 5, "b": 1}, {"a": 3}, None, 4, Choice("a", "prefix 3 blocks")),  # busier by exactly the margin
    ({"a": 2, "b": 0}, {"a": 3}, None, 1, Choice("b", "prefix 3 blocks on a but busier by 2")),
    ({"a": 0, "b": 0}, {"a": 1, "b": 3}, None, 4, Choice("b", "prefix 3 blocks")),  # the deepest wins
    ({"a": 2, "b": 1}, {"a": 2, "b": 2}, None, 4, Choice("b", "prefix 2 blocks")),  # equal depth: least busy
    ({"a": 0, "b": 0}, {}, "b", 4, Choice("b", "session hint")),
    ({"a": 0, "b": 0}, {"a": 2}, "b", 4, Choice("a", "prefix 2 blocks")),  # a prefix is evidence, a hint a guess
    ({"a": 0, "b": 9}, {}, "b", 4, Choice("a", "session hint on b but busier by 9")),
    ({"a": 0, "b": 0}, {"gone": 5}, "gone", 4, Choice("a", "least busy")),  # not a candidate: ignored
    ({"a": 1, "b": 0}, {"a": 2}, None, 0, Choice("b", "prefix 2 blocks on a but busier by 1")),  # margin 0
    ({}, {"a": 2}, "a", 4, None),
])
def test_pick(busy, depths, hinted, margin, expected):
    assert pick(busy, depths, hinted, margin) == expected


def N(name, busy=0, healthy=True):
    return NodeView(name, healthy, 0.0, {"m": 0.0}, busy={"m": busy})


def test_route_loaded_with_affinity_keeps_filters():
    nodes = [N("a", busy=1), N("b"), N("c", healthy=False)]
    assert route_loaded("m", nodes) == "b"
    assert route_loaded("m", nodes, affinity=Affinity({"a": 2}, None, 4)) == "a"
    assert route_loaded("m", nodes, frozenset({"a"}), Affinity({"a": 2}, None, 4)) == "b"
    assert route_loaded("m", nodes, affinity=Affinity({"c": 9}, None, 4)) == "b", "an unhealthy node is no candidate"


def chat(*contents: str, **extra) -> bytes:
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return orjson.dumps({"model": "m", "messages": messages, **extra})


def keys(body: bytes, path: str = "/v1/chat/completions", headers: dict | None = None, model: str = "m"):
    return RequestKeys(model, path, body, headers or {})


def test_a_second_turn_matches_the_first_at_its_depth():
    pm = PrefixMap(100)
    first = keys(chat("hi", "hello", "how are you"))
    pm.record(first.prefix, "a")
    second = keys(chat("hi", "hello", "how are you", "fine", "and then?"))
    assert pm.depths(second.prefix) == {"a": 3}
    pm.record(keys(chat("hi")).prefix, "b")  # another conversation with the same first message, served on b
    assert pm.depths(second.prefix) == {"a": 3, "b": 1}
    assert pm.depths(keys(chat("other")).prefix) == {}


def test_keys_are_canonical_and_per_model():
    one = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    other_order = orjson.dumps({"messages": [{"content": "x", "role": "user"}], "model": "m", "stream": True})
    assert keys(one).prefix == keys(other_order).prefix
    assert keys(one).prefix != keys(one, model="m2").prefix, "two models are two caches"
    assert keys(chat("x", user="u")).hints != keys(chat("x", user="u"), model="m2").hints


def test_completion_prompts_are_chunked_and_chained():
    long = "a" * CHUNK_CHARS + "b" * CHUNK_CHARS + "tail"
    assert [len(b) for b in prompt_blocks(long)] == [CHUNK_CHARS, CHUNK_CHARS, 4]
    assert len(prompt_blocks(list(range(100)))) == 2  # token ids in chunks of CHUNK_CHARS // 4
    assert prompt_blocks(["two", "prompts"]) == [] and prompt_blocks(None) == []
    pm = PrefixMap(100)
    pm.record(keys(orjson.dumps({"prompt": long}), "/v1/completions").prefix, "a")
    later = keys(orjson.dumps({"prompt": long[:2 * CHUNK_CHARS] + "something else"}), "/v1/completions")
    assert pm.depths(later.prefix) == {"a": 2}


def test_session_hints_most_specific_first():
    pm = PrefixMap(100)
    pm.record(keys(chat("x", user="u")).hints, "a")
    pm.record(keys(chat("x", prompt_cache_key="k")).hints, "b")
    assert pm.hinted(keys(chat("y", user="u")).hints) == "a"
    assert pm.hinted(keys(chat("y", user="u", prompt_cache_key="k")).hints) == "b"
    assert pm.hinted(keys(chat("y", metadata={"user_id": "u"})).hints) == "a", "Anthropic's user_id is a user"
    pm.record(keys(chat("x"), headers={"X-Session-ID": "s"}).hints, "c")
    assert pm.hinted(keys(chat("y", user="u"), headers={"X-Session-ID": "s"}).hints) == "c"
    assert pm.hinted(keys(chat("y", user="nobody")).hints) is None


def test_the_map_is_bounded_and_drops_the_least_lately_seen():
    pm = PrefixMap(3)
    pm.record([1, 2, 3], "a")
    pm.record([1], "b")  # 1 seen again (on b): 2 is now the oldest
    pm.record([4], "a")
    assert len(pm) == 3 and pm.depths([1, 2, 3, 4]) == {"a": 4, "b": 1}
    assert pm.depths([2]) == {}
    pm.record(range(1000), "a")
    assert len(pm) == 3


def test_bodies_that_are_not_chat_give_no_keys():
    assert keys(b"not json").prefix == [] and keys(b"[1, 2]").hints == []
    embedding = keys(orjson.dumps({"input": "x", "user": "u"}), "/v1/embeddings")
    count = keys(chat("x", user="u"), "/tokenize")  # Anthropic's count_tokens
    assert embedding.prefix == embedding.hints == count.prefix == count.hints == []
    assert not embedding.parsed and not count.parsed, "nothing cached there to follow: not even parsed"


def lifecycle_over(nodes: dict[str, int], **scheduling) -> Lifecycle:
    """A lifecycle over nodes with model m loaded, each with this many of the gateway's requests in flight."""
    specs = [NeuronSpec(name, "http://127.0.0.1:9") for name in nodes]
    fleet = Fleet(specs, session=None)
    for name, in_flight in nodes.items():
        fleet.nodes[name].healthy = True
        fleet.nodes[name].models = {"m": ModelInfo("m", memory_mb=10)}
        fleet.usage_of(name, "m").in_flight = in_flight
    return Lifecycle(GatewayConfig(neurons=specs, scheduling=Scheduling(**scheduling)), fleet, GatewayMetrics())


def test_one_loaded_node_never_parses_the_body():
    lifecycle = lifecycle_over({"a": 0})
    request = keys(chat("x", user="u"))
    assert lifecycle.loaded_node("m", keys=request).name == "a"
    lifecycle.served(request, "a")
    assert not request.parsed and len(lifecycle.prefixes) == 0


def test_two_loaded_nodes_follow_what_was_served(caplog):
    lifecycle = lifecycle_over({"a": 0, "b": 1})
    first = keys(chat("hi"))
    assert lifecycle.loaded_node("m", keys=first).name == "a"  # nothing known: least busy
    lifecycle.served(first, "b")  # say b served it (as after a retry): its keys were read, so kept
    with caplog.at_level("DEBUG", logger="cortex.gateway.lifecycle"):
        assert lifecycle.loaded_node("m", keys=keys(chat("hi", "hello", "more"))).name == "b"
        lifecycle.fleet.usage_of("b", "m").in_flight = 6  # busier than a (0) by 6, over the margin of 4
        assert lifecycle.loaded_node("m", keys=keys(chat("hi", "hello", "more"))).name == "a"
    assert "routing m to b: prefix 1 block" in caplog.text
    assert "routing m to a: prefix 1 block on b but busier by 6" in caplog.text


def test_a_map_of_zero_entries_is_off():
    lifecycle = lifecycle_over({"a": 0, "b": 1}, prefix_map_entries=0)
    request = keys(chat("hi"))
    lifecycle.served(request, "b")
    assert lifecycle.loaded_node("m", keys=request).name == "a" and not request.parsed


def test_scheduling_config(tmp_path):
    path = tmp_path / "cortex.toml"
    path.write_text("[scheduling]\nprefix_map_entries = 0\naffinity_margin = 2\n")
    cfg = load_config(path)
    assert (cfg.scheduling.prefix_map_entries, cfg.scheduling.affinity_margin) == (0, 2)
    assert (Scheduling().prefix_map_entries, Scheduling().affinity_margin) == (100_000, 4)
    for bad, expected in (("prefix_map_entries = -1", "prefix_map_entries: expected an integer >= 0, got -1"),
                          ("affinity_margin = 1.5", "affinity_margin: expected an integer >= 0, got 1.5")):
        path.write_text(f"[scheduling]\n{bad}\n")
        with pytest.raises(ConfigError, match=expected):
            load_config(path)
