"""Keys, limits and tokens: who gets in, how much they get, and what the operator is warned about."""

from __future__ import annotations

import os
import threading

import anthropic
import openai
import pytest

from tests.helpers import NO_EOS, CortexProcess, free_port, http_json, one_node_fleet

KEY, OTHER, ADMIN, TOKEN = "user-key-0001", "user-key-0002", "admin-key-0001", "neuron-token-01"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("secured")
    (root / "keys.txt").write_text(f"# one key per line\n{OTHER}\n")
    with one_node_fleet(root, models_dir, "--token", TOKEN, extra_toml=(
            f'neuron_token = "{TOKEN}"\n[auth]\nkeys = ["{KEY}"]\nkeys_file = "keys.txt"\n'
            f'admin_keys = ["{ADMIN}"]\nrequests_per_minute = 6\nmax_concurrent = 1')) as (gateway, neuron, _):
        yield gateway, neuron


def call(url, path, key=None, header="Authorization", body=None, method="POST"):
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if key:
        headers[header] = f"Bearer {key}" if header == "Authorization" else key
    data = json.dumps(body or {"model": "tiny-gguf", "messages": [{"role": "user", "content": "x"}],
                               "max_tokens": 2}).encode() if method == "POST" else None
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_neuron_port_needs_the_token(secured):
    _, neuron = secured
    assert call(neuron.url, "/health", method="GET")[0] == 200, "health stays open"
    status, body, _ = call(neuron.url, "/models/load", body={"model": "tiny-gguf"})
    assert status == 401 and body["error"]["code"] == "invalid_token"
    assert call(neuron.url, "/models", key="wrong-token", method="GET")[0] == 401
    assert call(neuron.url, "/models", key=TOKEN, method="GET")[0] == 200


def test_keys_in_both_headers_and_both_dialects(secured):
    gateway, _ = secured
    assert call(gateway.url, "/health", method="GET")[0] == 200
    status, body, _ = call(gateway.url, "/v1/chat/completions")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body, _ = call(gateway.url, "/v1/messages", key="nope-nope-nope", header="x-api-key",
                           body={"model": "tiny-gguf", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    assert status == 401 and body == {"type": "error", "error": {"type": "authentication_error",
                                                                  "message": body["error"]["message"]}}
    assert call(gateway.url, "/v1/models", key="nope-nope-nope", method="GET")[0] == 401
    ok = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    assert ok.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "x"}],
                                      max_tokens=2).usage.completion_tokens > 0
    from_file = anthropic.Anthropic(base_url=gateway.url, api_key=OTHER, max_retries=0)
    assert from_file.messages.create(model="tiny-gguf", max_tokens=2,
                                     messages=[{"role": "user", "content": "x"}]).usage.output_tokens > 0


def test_admin_api_needs_an_admin_key(secured):
    gateway, _ = secured
    assert call(gateway.url, "/admin/status", method="GET")[0] == 401
    assert call(gateway.url, "/admin/status", key=KEY, method="GET")[0] == 401, "a user key is not an admin key"
    assert call(gateway.url, "/admin/status", key=ADMIN, method="GET")[0] == 200


def test_requests_per_minute_per_key(secured):
    gateway, _ = secured
    statuses = [call(gateway.url, "/v1/models", key=OTHER, method="GET") for _ in range(8)]
    codes = [s for s, _, _ in statuses]
    assert codes.count(429) >= 1 and codes[0] == 200
    limited = next(r for r in statuses if r[0] == 429)
    assert limited[1]["error"]["code"] == "rate_limit" and int(limited[2]["Retry-After"]) >= 1


def test_concurrent_requests_per_key(secured):
    gateway, neuron = secured
    http_json("POST", gateway.url + "/admin/load", {"node": "n1", "model": "tiny-gguf"})
    import urllib.request

    req = urllib.request.Request(neuron.url + "/debug/faults", method="POST",
                                 data=b'{"model": "tiny-gguf", "fault": "slow", "delay_ms": 50}',
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    started = threading.Event()

    def slow():
        for _ in client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=40, stream=True, logit_bias=NO_EOS):
            started.set()

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(30)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert err.value.body["code"] == "concurrency_limit"
    t.join(60)


def test_startup_warnings(tmp_path):
    (tmp_path / "cortex.toml").write_text(f'[gateway]\nlisten = "0.0.0.0:{free_port()}"\nmetrics_listen = '
                                          f'"127.0.0.1:{free_port()}"\n')
    open_gw = CortexProcess(["serve", "--config", str(tmp_path / "cortex.toml")], 0, tmp_path / "open.log")
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    port = free_port()
    (keyed / "cortex.toml").write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = '
                                       f'"127.0.0.1:{free_port()}"\n[auth]\nkeys = ["{KEY}"]\n')
    os.chmod(keyed / "cortex.toml", 0o644)
    keyed_gw = CortexProcess(["serve", "--config", str(keyed / "cortex.toml")], port, keyed / "keyed.log")
    try:
        import time
        deadline = time.monotonic() + 30  # no neurons: /health says "down", so wait for the start-up lines
        while not ("gateway on" in open_gw.log() and "gateway on" in keyed_gw.log()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "with no user keys in the config: unless the state database holds keys, anyone who can reach port" \
            in open_gw.log()
        assert "holds keys and is readable by other users (mode 644)" in keyed_gw.log()
    finally:
        open_gw.terminate()
        keyed_gw.terminate()
