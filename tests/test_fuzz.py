"""Property: whatever a client sends to any public route, the answer is a success or a 4xx in the
route's own envelope, never a 5xx, and both servers keep serving afterwards."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import http_json, one_node_fleet

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                    max_leaves=20)
MSG = [{"role": "user", "content": "hi"}]
VALID = {
    "/v1/chat/completions": {"model": "tiny-gguf", "messages": MSG, "max_tokens": 3},
    "/v1/completions": {"model": "tiny-gguf", "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": "tiny-gguf", "input": "hi"},
    "/v1/messages": {"model": "tiny-gguf", "messages": MSG, "max_tokens": 3},
    "/v1/messages/count_tokens": {"model": "tiny-gguf", "messages": MSG},
    "/admin/load": {"node": "n1", "model": "tiny-gguf"},
    "/admin/pin": {"node": "n1", "model": "tiny-gguf"},
    "/models/load": {"model": "tiny-gguf"},
    "/tokenize": {"model": "tiny-gguf", "messages": MSG},
}
GATEWAY_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                 "/v1/messages/count_tokens", "/admin/load", "/admin/unload", "/admin/pin", "/admin/unpin"]
NEURON_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/models/load", "/models/unload",
                "/tokenize"]
GETS = {"gateway": ["/v1/models", "/health", "/admin/status", "/nope"],
        "neuron": ["/models", "/models/available", "/health", "/metrics", "/nope"]}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("fuzz")
    with one_node_fleet(root, models_dir, "--cpu-memory-mb", "4000",
                        extra_toml="max_body_mb = 1") as (gateway, neuron, _):
        yield {"gateway": gateway, "neuron": neuron}


def send(url: str, body: bytes | None, method: str = "POST", headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check(path: str, status: int, raw: bytes) -> None:
    assert status < 500, (path, status, raw[:300])
    if status < 400 or path in ("/metrics",):
        return
    body = json.loads(raw)
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        assert body["error"]["type"] in ("invalid_request_error", "not_found_error", "authentication_error",
                                         "request_too_large", "rate_limit_error", "permission_error"), body
    else:
        assert isinstance(body["error"], dict) and isinstance(body["error"]["message"], str), body
        assert body["error"]["message"] and "Traceback" not in body["error"]["message"]


def mutate(valid: dict, key: str, value) -> dict:
    return {**valid, key: value}


BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from(list(VALID)).flatmap(lambda p: st.tuples(st.just(VALID[p]), st.sampled_from(
        sorted({*VALID[p], "stream", "temperature", "tools", "stop", "n", "system", "tool_choice", "devices",
                "backend", "stop_sequences", "logit_bias", "top_k", "max_completion_tokens"})), JSON)).map(
        lambda t: json.dumps(mutate(*t)).encode()),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server=st.sampled_from(["gateway", "neuron"]), body=BODIES, data=st.data())
def test_any_body_on_any_route(servers, server, body, data):
    path = data.draw(st.sampled_from(GATEWAY_POSTS if server == "gateway" else NEURON_POSTS))
    status, raw = send(servers[server].url + path, body, headers={"Content-Type": "application/json"})
    event(f"{server} answered {status // 100}xx")  # --hypothesis-show-statistics: both kinds must occur
    check(path, status, raw)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server=st.sampled_from(["gateway", "neuron"]), method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]),
       data=st.data())
def test_wrong_methods_and_unknown_routes(servers, server, method, data):
    path = data.draw(st.sampled_from(GETS[server] + (GATEWAY_POSTS if server == "gateway" else NEURON_POSTS)))
    status, raw = send(servers[server].url + path, None, method=method)
    check(path, status, raw)


@pytest.mark.parametrize("server", ["gateway", "neuron"])
def test_oversized_deeply_nested_and_huge_headers(servers, server):
    url = servers[server].url
    status, raw = send(url + "/v1/chat/completions", b"x" * (70 * 2**20))
    assert status == 413 and b"request_too_large" in raw
    nested = ("[" * 5000 + "]" * 5000).encode()
    status, raw = send(url + "/v1/chat/completions", b'{"model": "tiny-gguf", "messages": ' + nested + b"}")
    assert status == 400 and b"invalid_json" in raw
    status, _ = send(url + "/v1/models", None, method="GET", headers={"X-Big": "a" * 20000})
    assert status in (400, 431)


def test_both_still_serve_afterwards(servers):
    for name, proc in servers.items():
        assert http_json("GET", proc.url + "/health")[0] == 200, name
    status, body = http_json("POST", servers["gateway"].url + "/v1/chat/completions",
                             {"model": "tiny-gguf", "messages": MSG, "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] > 0
