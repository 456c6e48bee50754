"""Keys made at run time, for real: the admin API and `cortex keys`, used by the official SDKs, allow-lists in
every dialect, PATCH and revocation in force for the next request, and never a key in the gateway's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anthropic
import openai
import pytest

from tests.helpers import CORTEX, http_json, one_node_fleet, start_gateway, wait_for

ADMIN, CONFIG_KEY = "admin-key-0001", "config-key-0001"
MODELS_TOML = '[aliases]\nfast = "tiny-gguf"\n'
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SECRETS: list[str] = []  # every key the tests made: none may reach the log


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("keys")
    with one_node_fleet(root, models_dir, load=("tiny-gguf",), models_toml=MODELS_TOML, args=("--log-level", "debug"),
                        extra_toml=f'[auth]\nkeys = ["{CONFIG_KEY}"]\nadmin_keys = ["{ADMIN}"]') as (gw, node, _):
        yield gw, node


def admin(gateway, method, path, body=None, key=ADMIN):
    return http_json(method, gateway.url + "/admin" + path, body, headers={"Authorization": f"Bearer {key}"})


def make_key(gateway, **settings) -> tuple[str, str]:
    name = settings.pop("name", None) or f"k-{uuid.uuid4().hex[:8]}"
    status, body = admin(gateway, "POST", "/keys", {"name": name, **settings})
    assert status == 201, body
    SECRETS.append(body["key"])
    return name, body["key"]


def oai(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def claude(gateway, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_a_made_key_works_in_both_sdks_until_revoked(fleet):
    gateway, node = fleet
    name, key = make_key(gateway, priority="high")
    assert key.startswith("sk-cortex-")
    assert oai(gateway, key).chat.completions.create(model="tiny-gguf", **CHAT).usage.completion_tokens > 0
    chunks = list(oai(gateway, key).chat.completions.create(model="tiny-gguf", stream=True, **CHAT))
    assert chunks
    assert claude(gateway, key).messages.create(model="tiny-gguf", **CHAT).usage.output_tokens > 0
    wait_for(lambda: any("priority=high" in line and f"tenant={name}" in line for line in node.log().splitlines()),
             what="the key's priority and name at the neuron")
    assert oai(gateway, CONFIG_KEY).chat.completions.create(model="tiny-gguf", **CHAT).choices, "config keys still work"
    status, listed = admin(gateway, "GET", "/keys")
    assert status == 200 and name in [k["name"] for k in listed["keys"]]
    assert key not in str(listed) and "key_hash" not in str(listed) and "'key'" not in str(listed)
    assert admin(gateway, "GET", f"/keys/{name}")[1]["priority"] == "high"
    status, revoked = admin(gateway, "DELETE", f"/keys/{name}")
    assert status == 200 and revoked["revoked_at"]
    with pytest.raises(openai.AuthenticationError):
        oai(gateway, key).chat.completions.create(model="tiny-gguf", **CHAT)
    with pytest.raises(anthropic.AuthenticationError):
        claude(gateway, key).messages.create(model="tiny-gguf", **CHAT)
    with pytest.raises(openai.AuthenticationError):
        oai(gateway, key).models.list()
    assert admin(gateway, "GET", f"/keys/{name}")[1]["revoked_at"], "a revoked key is still shown, as revoked"


def test_an_allow_list_filters_the_models_and_refuses_others_in_every_dialect(fleet):
    gateway, _ = fleet
    _, key = make_key(gateway, models=["fast"])  # an alias: the model it names is allowed too
    openai_client, anthropic_client = oai(gateway, key), claude(gateway, key)
    assert sorted(m.id for m in openai_client.models.list()) == ["fast", "tiny-gguf"]
    assert sorted(m.id for m in anthropic_client.models.list()) == ["fast", "tiny-gguf"]
    assert openai_client.models.retrieve("fast").id == "fast"
    assert openai_client.chat.completions.create(model="fast", **CHAT).choices
    assert anthropic_client.messages.create(model="tiny-gguf", **CHAT).content is not None
    refused = [
        lambda: openai_client.models.retrieve("tiny-hf"),
        lambda: openai_client.chat.completions.create(model="tiny-hf", **CHAT),
        lambda: openai_client.chat.completions.create(model="tiny-hf", stream=True, **CHAT),
        lambda: openai_client.completions.create(model="tiny-hf", prompt="hi", max_tokens=2),
        lambda: openai_client.embeddings.create(model="tiny-hf", input="hi"),
        lambda: openai_client.responses.create(model="tiny-hf", input="hi", max_output_tokens=16),
    ]
    for call in refused:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["code"] == "model_not_found"
        assert err.value.body["message"] == "The model 'tiny-hf' does not exist or you do not have access to it."
    for call in (lambda: anthropic_client.models.retrieve("tiny-hf"),
                 lambda: anthropic_client.messages.create(model="tiny-hf", **CHAT),
                 lambda: anthropic_client.messages.create(model="tiny-hf", stream=True, **CHAT),
                 lambda: anthropic_client.messages.count_tokens(model="tiny-hf", messages=CHAT["messages"])):
        with pytest.raises(anthropic.NotFoundError) as err:
            call()
        assert err.value.body["error"]["type"] == "not_found_error"


def test_patch_holds_for_the_next_request(fleet):
    gateway, _ = fleet
    name, key = make_key(gateway)
    client = oai(gateway, key)
    assert client.chat.completions.create(model="tiny-gguf", **CHAT).choices
    assert admin(gateway, "PATCH", f"/keys/{name}", {"models": ["other-*"]})[0] == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-gguf", **CHAT)
    assert [m.id for m in client.models.list()] == []
    status, body = admin(gateway, "PATCH", f"/keys/{name}", {"models": None, "rpm": 1})
    assert status == 200 and body["models"] is None and body["rpm"] == 1
    assert client.chat.completions.create(model="tiny-gguf", **CHAT).choices
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="tiny-gguf", **CHAT)
    assert err.value.body["code"] == "rate_limit"
    assert admin(gateway, "PATCH", f"/keys/{name}", {"rpm": None})[0] == 200
    assert client.chat.completions.create(model="tiny-gguf", **CHAT).choices


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), [
    ("POST", "/keys", {}, 400, "name"),
    ("POST", "/keys", {"name": "has space"}, 400, "name"),
    ("POST", "/keys", {"name": "x" * 65}, 400, "name"),
    ("POST", "/keys", {"name": "ok-name", "rpm": -1}, 400, "rpm"),
    ("POST", "/keys", {"name": "ok-name", "budget_window": "fortnight"}, 400, "budget_window"),
    ("POST", "/keys", {"name": "ok-name", "priority": "urgent"}, 400, "priority"),
    ("POST", "/keys", {"name": "ok-name", "models": "tiny-gguf"}, 400, "models"),
    ("POST", "/keys", {"name": "ok-name", "colour": "red"}, 400, "colour"),
    ("PATCH", "/keys/nobody", {"rpm": 5}, 404, "name"),
    ("DELETE", "/keys/nobody", None, 404, "name"),
    ("GET", "/keys/nobody", None, 404, "name"),
])
def test_bad_admin_input_is_answered_naming_the_field(fleet, method, path, body, status, param):
    gateway, _ = fleet
    got, answer = admin(gateway, method, path, body)
    assert got == status, answer
    assert answer["error"]["param"] == param and answer["error"]["message"]


def test_a_taken_name_is_409_and_the_admin_api_needs_the_admin_key(fleet):
    gateway, _ = fleet
    name, key = make_key(gateway)
    status, answer = admin(gateway, "POST", "/keys", {"name": name})
    assert status == 409 and answer["error"]["code"] == "key_name_taken" and name in answer["error"]["message"]
    assert admin(gateway, "PATCH", f"/keys/{name}", {})[0] == 400
    assert admin(gateway, "GET", "/keys", key=key)[0] == 401, "a made key is no admin key"
    assert admin(gateway, "POST", "/keys", {"name": "sneaky"}, key=CONFIG_KEY)[0] == 401


def cortex_cli(gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORTEX_GATEWAY": gateway.url, "CORTEX_ADMIN_KEY": ADMIN}
    return subprocess.run(CORTEX + list(args), capture_output=True, text=True, env=env, timeout=60)


def test_the_cli_makes_lists_updates_completes_and_revokes(fleet):
    gateway, _ = fleet
    made = cortex_cli(gateway, "keys", "create", "cli-key", "--models", "fast,tiny-*", "--rpm", "50",
                      "--budget-window", "30d", "--budget-tokens", "1000")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    SECRETS.append(key)
    assert key.startswith("sk-cortex-") and "cannot be shown again" in made.stderr
    assert oai(gateway, key).chat.completions.create(model="fast", **CHAT).choices
    listed = cortex_cli(gateway, "keys", "list")
    assert listed.returncode == 0 and "cli-key" in listed.stdout and key not in listed.stdout
    row = next(k for k in json.loads(cortex_cli(gateway, "keys", "list", "--json").stdout) if k["name"] == "cli-key")
    assert row["models"] == ["fast", "tiny-*"] and row["rpm"] == 50 and row["budget_window"] == "30d"
    assert cortex_cli(gateway, "keys", "update", "cli-key", "--rpm", "none", "--priority", "low").returncode == 0
    assert admin(gateway, "GET", "/keys/cli-key")[1]["rpm"] is None
    env = {**os.environ, "CORTEX_GATEWAY": gateway.url, "CORTEX_ADMIN_KEY": ADMIN,
           "COMP_WORDS": "cortex keys revoke cli", "COMP_CWORD": "3", "_CORTEX_COMPLETE": "bash_complete"}
    completed = subprocess.run([str(Path(sys.executable).parent / "cortex")], capture_output=True, text=True, env=env,
                               timeout=60)  # the installed command: completion keys on its name
    assert "plain,cli-key" in completed.stdout.splitlines(), completed.stdout
    bad = cortex_cli(gateway, "keys", "create", "cli-key-2", "--budget-window", "2w")
    assert bad.returncode != 0 and "budget_window" in bad.stderr and "Traceback" not in bad.stderr
    assert cortex_cli(gateway, "keys", "revoke", "cli-key").returncode == 0
    with pytest.raises(openai.AuthenticationError):
        oai(gateway, key).chat.completions.create(model="fast", **CHAT)
    gone = cortex_cli(gateway, "keys", "revoke", "cli-key")
    assert gone.returncode != 0 and "no active key" in gone.stderr


def test_no_key_reaches_the_log(fleet):
    gateway, _ = fleet
    name, key = make_key(gateway)
    oai(gateway, key).chat.completions.create(model="tiny-gguf", **CHAT)
    log = gateway.log()
    assert f"key={name}" in log, "the key's name is logged, for the operator"
    assert " DEBUG " in log, "debug lines included"
    for secret in SECRETS:
        assert secret not in log and secret.removeprefix("sk-cortex-") not in log


def test_a_gateway_with_keys_only_in_its_database_requires_them_after_a_restart(tmp_path, fleet):
    _, node = fleet
    state = tmp_path / "state"
    with start_gateway(tmp_path, {"n1": node.url}, state_dir=state) as gateway:
        status, body = http_json("POST", gateway.url + "/admin/keys", {"name": "only-one"})
        assert status == 409 and body["error"]["code"] == "admin_key_required", "an open admin API makes no keys"
        assert "set [auth] admin_keys" in body["error"]["message"]
    admin_only = f'[auth]\nadmin_keys = ["{ADMIN}"]'
    with start_gateway(tmp_path, {"n1": node.url}, state_dir=state, extra_toml=admin_only) as gateway:
        assert http_json("GET", gateway.url + "/v1/models")[0] == 200, "no key anywhere: open"
        status, made = admin(gateway, "POST", "/keys", {"name": "only-one"})
        assert status == 201
        assert http_json("GET", gateway.url + "/v1/models")[0] == 401, "keyed from the first key on"
    with start_gateway(tmp_path, {"n1": node.url}, state_dir=state) as gateway:
        assert http_json("GET", gateway.url + "/v1/models")[0] == 401
        assert oai(gateway, made["key"]).models.list() is not None


def test_two_gateways_on_one_database_share_keys(tmp_path, fleet):
    _, node = fleet
    shared = f'[state]\nurl = "sqlite:///{tmp_path / "shared.db"}"\n[auth]\nadmin_keys = ["{ADMIN}"]'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with start_gateway(tmp_path / "a", {"n1": node.url}, extra_toml=shared) as one, \
            start_gateway(tmp_path / "b", {"n1": node.url}, extra_toml=shared) as other:
        _, key = make_key(one, name="shared-key")
        # Made through the first gateway: the second finds the unknown hash in the database at once.
        assert oai(other, key).chat.completions.create(model="tiny-gguf", **CHAT).choices
        assert admin(one, "DELETE", "/keys/shared-key")[0] == 200
        # Revoked through the first: the second's next refresh of its table drops it.
        wait_for(lambda: http_json("GET", other.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})[0]
                 == 401, what="the revocation seen by the other gateway")
