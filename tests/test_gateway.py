"""The gateway over two real neurons: catalog, routing, cold loads, single-flight, failover, metrics."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.helpers import NO_EOS, free_port, http_json, make_tiny, metric, start_gateway, start_neuron

MODELS_TOML = """\
# profiles for the test fleet
[[models]]
id = "beta"
priority = 50

[aliases]
gpt-test = "alpha"   # clients that only know OpenAI names
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    dirs = {"n1": root / "m1", "n2": root / "m2"}
    make_tiny(dirs["n1"] / "alpha.gguf", "gguf", "--seed", "1")
    make_tiny(dirs["n2"] / "beta", "hf", "--seed", "2")
    for d in dirs.values():
        make_tiny(d / "shared.gguf", "gguf", "--seed", "3")
    with contextlib.ExitStack() as stack:
        neurons = {name: stack.enter_context(start_neuron(root, d, "--cpu-memory-mb", "4000", name=name))
                   for name, d in dirs.items()}
        with start_gateway(root, {n: p.url for n, p in neurons.items()}, models_toml=MODELS_TOML) as gateway:
            yield gateway, neurons


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0)


def status(gateway) -> dict:
    return http_json("GET", gateway.url + "/admin/status")[1]


def loaded_on(gateway, model) -> list[str]:
    return [n["name"] for n in status(gateway)["nodes"]
            if any(m["id"] == model and m["status"] == "loaded" for m in n["models"])]


def ask(client, model, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=kw.pop("max_tokens", 4), **kw)


def test_catalog_merges_every_node_and_alias(client):
    models = {m.id: m for m in client.models.list().data}
    assert {"alpha", "beta", "shared", "gpt-test"} <= set(models)
    assert models["alpha"].model_extra["loadable_on"] == ["n1"]
    assert models["beta"].model_extra["loadable_on"] == ["n2"]
    assert sorted(models["shared"].model_extra["loadable_on"]) == ["n1", "n2"]
    assert models["gpt-test"].model_extra["alias_of"] == "alpha"


def test_models_retrieve_in_both_sdks(fleet, client):
    import anthropic

    assert client.models.retrieve("shared").id == "shared"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert (err.value.body["code"], err.value.body["type"]) == ("model_not_found", "invalid_request_error")
    claude = anthropic.Anthropic(base_url=fleet[0].url, api_key="unused", max_retries=0)
    assert claude.models.retrieve("alpha").id == "alpha"
    assert {"alpha", "beta", "shared"} <= {m.id for m in claude.models.list()}
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.models.retrieve("no-such-model")
    assert err.value.body["error"]["type"] == "not_found_error"


def test_cold_load_on_the_node_that_has_the_model(fleet, client):
    gateway, _ = fleet
    before = metric(gateway, 'cortex_cold_starts_total{model="beta",node="n2"}')
    resp = ask(client, "beta")
    assert resp.choices[0].message.role == "assistant"
    assert loaded_on(gateway, "beta") == ["n2"]
    assert metric(gateway, 'cortex_cold_starts_total{model="beta",node="n2"}') == before + 1
    ask(client, "beta")
    assert metric(gateway, 'cortex_cold_starts_total{model="beta",node="n2"}') == before + 1, "warm now"


def test_alias_routes_to_its_model(fleet, client):
    resp = ask(client, "gpt-test")
    assert resp.usage.completion_tokens > 0
    assert loaded_on(fleet[0], "alpha") == ["n1"]


def test_cold_load_is_single_flight_under_20_concurrent_requests(fleet, client):
    gateway, _ = fleet
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: ask(client, "shared", stream=False, seed=i), range(20)))
    assert all(r.usage.completion_tokens > 0 for r in results)
    cold = sum(metric(gateway, f'cortex_cold_starts_total{{model="shared",node="{n}"}}') for n in ("n1", "n2"))
    assert cold == 1
    assert len(loaded_on(gateway, "shared")) == 1


def test_streams_relay_chunks_and_usage(client):
    chunks = list(ask(client, "alpha", stream=True, max_tokens=6, stream_options={"include_usage": True},
                      logit_bias=NO_EOS))  # an early end token would make the count a matter of luck
    assert chunks[-1].usage.completion_tokens == 6
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1


def test_metrics_match_the_requests_made(fleet, client):
    gateway, _ = fleet
    series = 'cortex_requests_total{endpoint="chat",model="alpha",node="n1",status="200"}'
    tokens = 'cortex_tokens_total{kind="completion",model="alpha",node="n1"}'
    before, before_tokens = metric(gateway, series), metric(gateway, tokens)
    made = [ask(client, "alpha", max_tokens=5, logit_bias=NO_EOS) for _ in range(4)]
    assert metric(gateway, series) == before + 4
    assert metric(gateway, tokens) == before_tokens + sum(r.usage.completion_tokens for r in made)
    assert metric(gateway, 'cortex_node_up{node="n1"}') == 1.0


def test_embeddings_through_the_gateway(client):
    resp = client.embeddings.create(model="alpha", input="hello")
    assert len(resp.data[0].embedding) == 64


@pytest.mark.parametrize("body, status, code", [
    (b"{nope", 400, "invalid_json"),
    (json.dumps({"messages": []}).encode(), 400, "missing_field"),
    (json.dumps({"model": "ghost", "messages": [{"role": "user", "content": "x"}]}).encode(), 404,
     "model_not_found"),
    (json.dumps({"model": "alpha", "messages": "x"}).encode(), 400, "invalid_request"),
])
def test_bad_requests_get_openai_errors(fleet, body, status, code):
    req = urllib.request.Request(fleet[0].url + "/v1/chat/completions", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == status
    assert json.loads(err.value.read())["error"]["code"] == code


def test_admin_errors_name_the_problem(fleet):
    status_, body = http_json("POST", fleet[0].url + "/admin/load", {"node": "nowhere", "model": "alpha"})
    assert status_ == 404 and "n1, n2" in body["error"]["message"]
    status_, body = http_json("POST", fleet[0].url + "/admin/load", {"node": "n1", "model": "beta"})
    assert status_ == 404 and body["error"]["code"] == "model_not_found"


def test_health_counts_nodes(fleet):
    assert http_json("GET", fleet[0].url + "/health") == (200, {"status": "ok", "nodes": {"healthy": 2, "total": 2}})


def test_no_healthy_node_is_a_503_with_retry_after(tmp_path):
    gateway = start_gateway(tmp_path, {"ghost": f"http://127.0.0.1:{free_port()}"}, wait=False)
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                code, body = http_json("GET", gateway.url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        assert (code, body["status"]) == (503, "down")
        req = urllib.request.Request(gateway.url + "/v1/models")
        assert json.loads(urllib.request.urlopen(req).read())["data"] == []
    finally:
        gateway.terminate()


def test_bad_config_names_file_and_key(tmp_path):
    import subprocess

    from tests.helpers import CORTEX

    (tmp_path / "cortex.toml").write_text('[eviction]\nstrategy = "fifo"\n')
    result = subprocess.run(CORTEX + ["serve", "--config", str(tmp_path / "cortex.toml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "cortex.toml: [eviction].strategy: expected \"lru\" or \"priority\"" in result.stderr
    assert "Traceback" not in result.stderr
