"""Token budgets and TPM over real processes with the official SDKs (issue 24, items 4, 5 and 7).

Keys are made through the admin API (or, for a window shorter than it accepts, in the state database
before the gateway starts). Answers are kept from ending early (NO_EOS), so each one costs its prompt
plus max_tokens exactly and a budget's arithmetic is known; what the gateway billed is compared with what
the answers reported, through /admin/usage, `cortex usage` and the per-key metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import openai
import pytest

from cortex_gateway.state_db import KeySettings, StateDB, hash_key, new_secret
from tests.helpers import CORTEX, NO_EOS, http_json, load_models, metric, start_gateway, start_neuron, wait_for

ADMIN = "admin-key-budget-01"
MODEL = "tiny-gguf"
USER = [{"role": "user", "content": "hi"}]
AUTH_TOML = f'[auth]\nadmin_keys = ["{ADMIN}"]'


@pytest.fixture(scope="module")
def node(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("budgets")
    with start_neuron(root, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ({"model": MODEL, "max_in_flight": 4, "max_queue_depth": 64},))
        yield root, neuron


@pytest.fixture(scope="module")
def gateway(node):
    root, neuron = node
    with start_gateway(root, {"n1": neuron.url}, extra_toml=AUTH_TOML) as gw:
        yield gw


def admin(gateway, method: str, path: str, body: dict | None = None):
    return http_json(method, gateway.url + "/admin" + path, body, headers={"Authorization": f"Bearer {ADMIN}"})


def make_key(gateway, **settings) -> tuple[str, str]:
    name = f"b-{uuid.uuid4().hex[:8]}"
    status, body = admin(gateway, "POST", "/keys", {"name": name, **settings})
    assert status == 201, body
    return name, body["key"]


def oai(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=120)


def usage_of(gateway, name: str) -> dict:
    status, body = admin(gateway, "GET", f"/usage?key={name}")
    assert status == 200, body
    return body


def billed(usage: dict) -> tuple[int, int]:
    """(total tokens, requests) over the key's usage rows."""
    return sum(r["total_tokens"] for r in usage["usage"]), sum(r["requests"] for r in usage["usage"])


def chat(client: openai.OpenAI, max_tokens: int, stream: bool):
    """One chat request: its usage's total, or the 429 it got."""
    try:
        if not stream:
            answer = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=max_tokens,
                                                    logit_bias=NO_EOS)
            return answer.usage.total_tokens
        chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=max_tokens,
                                                     logit_bias=NO_EOS, stream=True,
                                                     stream_options={"include_usage": True}))
        return next(c.usage.total_tokens for c in chunks if c.usage)
    except openai.RateLimitError as err:
        return err


def refused(result) -> openai.RateLimitError | None:
    return None if isinstance(result, int) else result


def prompt_tokens(gateway) -> int:
    """The prompt's size as the model counts it, from one answer of an unlimited key."""
    _, key = make_key(gateway)
    return oai(gateway, key).chat.completions.create(model=MODEL, messages=USER, max_tokens=1).usage.prompt_tokens


def test_twenty_at_once_on_a_small_budget_are_billed_within_it(gateway):
    cost = prompt_tokens(gateway) + 8  # each answer: its prompt and 8 tokens, never ending early
    budget = 5 * cost + cost // 2  # room for five answers, not six
    name, key = make_key(gateway, budget_tokens=budget, budget_window="1d")
    client = oai(gateway, key)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: chat(client, 8, stream=i % 2 == 1), range(20)))
    answered = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    assert len(answered) == 5 and len(refused) == 15, results
    for err in refused:
        assert err.status_code == 429 and err.body["code"] == "insufficient_quota", err.body
        assert err.body["type"] == "insufficient_quota" and int(err.response.headers["retry-after"]) >= 1
    usage = usage_of(gateway, name)
    assert billed(usage) == (sum(answered), 5)
    assert sum(answered) <= budget
    (key_row,) = usage["keys"]
    assert key_row["settled_tokens"] == sum(answered) and key_row["reserved_tokens"] == 0
    assert key_row["budget_left"] == budget - sum(answered)
    series = f'cortex_key_tokens_total{{key="{name}",kind="%s"}}'
    wait_for(lambda: metric(gateway, series % "prompt") + metric(gateway, series % "completion") == sum(answered),
             what="the per-key token counters to match the usage")  # a stream's are counted after its last event
    assert metric(gateway, f'cortex_key_refusals_total{{key="{name}",reason="budget"}}') == 15


def test_anthropic_routes_refuse_with_their_rate_limit_error(gateway):
    name, key = make_key(gateway, budget_tokens=0, budget_window="1h")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=MODEL, max_tokens=4, messages=USER)
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "token budget" in info.value.body["error"]["message"]
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_tpm_refuses_with_retry_after_and_the_headers_clients_read(gateway):
    cost = prompt_tokens(gateway) + 8
    tpm = 3 * cost + cost // 2  # three answers a minute, and the bucket refills slowly
    name, key = make_key(gateway, tpm=tpm)
    raw = oai(gateway, key).chat.completions.with_raw_response
    first = raw.create(model=MODEL, messages=USER, max_tokens=8, logit_bias=NO_EOS)
    assert first.headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert int(first.headers["x-ratelimit-remaining-tokens"]) <= tpm - cost
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")
    refused = None
    for _ in range(10):
        try:
            raw.create(model=MODEL, messages=USER, max_tokens=8, logit_bias=NO_EOS)
        except openai.RateLimitError as err:
            refused = err
            break
    assert refused is not None, "the bucket never emptied"
    assert refused.body["code"] == "rate_limit_tokens" and "tokens per minute" in refused.body["message"]
    assert int(refused.response.headers["retry-after"]) >= 1
    assert int(refused.response.headers["x-ratelimit-remaining-tokens"]) < cost
    assert metric(gateway, f'cortex_key_refusals_total{{key="{name}",reason="tpm"}}') == 1
    answer = anthropic.Anthropic(base_url=gateway.url, api_key=make_key(gateway, tpm=10_000)[1], max_retries=0)
    got = answer.messages.with_raw_response.create(model=MODEL, max_tokens=4, messages=USER)
    assert got.headers["anthropic-ratelimit-tokens-limit"] == "10000"
    assert int(got.headers["anthropic-ratelimit-tokens-remaining"]) < 10_000
    assert got.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")


def test_cortex_usage_shows_the_key(gateway):
    name, key = make_key(gateway, budget_tokens=100_000, budget_window="month")
    total = oai(gateway, key).chat.completions.create(model=MODEL, messages=USER, max_tokens=3).usage.total_tokens
    args = ["usage", name, "--gateway", gateway.url, "--admin-key", ADMIN]
    shown = json.loads(subprocess.run(CORTEX + [*args, "--json"], capture_output=True, text=True, check=True).stdout)
    assert shown["usage"][0]["total_tokens"] == total and shown["keys"][0]["budget_left"] == 100_000 - total
    wide = {**os.environ, "COLUMNS": "200"}  # one row a line, so the test reads cells whole
    table = subprocess.run(CORTEX + args, capture_output=True, text=True, check=True, env=wide).stdout
    assert name in table and str(100_000 - total) in table
    status, body = http_json("GET", gateway.url + "/admin/usage", headers={"Authorization": f"Bearer {key}"})
    assert status == 401 and "admin key" in body["error"]["message"], "an API key does not read usage"
    missing = subprocess.run(CORTEX + ["usage", "no-such-key", "--gateway", gateway.url, "--admin-key", ADMIN],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no key named 'no-such-key'" in missing.stderr


def make_db_key(state_dir: Path, settings: KeySettings) -> tuple[str, str]:
    """A key written into the gateway's database before it starts (a window the admin API does not take)."""
    name, secret = f"d-{uuid.uuid4().hex[:8]}", new_secret()

    async def create():
        db = await StateDB.open(None, state_dir, "test")
        try:
            await db.create_key(name, hash_key(secret), settings)
        finally:
            await db.close()

    asyncio.run(create())
    return name, secret


def test_usage_survives_a_restart_and_a_kill_9(node, tmp_path):
    root, neuron = node
    state = tmp_path / "state"
    name, key = make_db_key(state, KeySettings(budget_tokens=100_000, budget_window="1d"))
    reported = 0
    for stop in ("terminate", "kill"):
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=AUTH_TOML, state_dir=state) as gw:
            reported += chat(oai(gw, key), 4, stream=False)
            assert billed(usage_of(gw, name))[0] == reported, "a whole answer is billed before it is sent"
            reported += chat(oai(gw, key), 4, stream=True)
            assert billed(usage_of(gw, name))[0] == reported, "a stream is billed before its [DONE] is relayed"
            gw.kill() if stop == "kill" else gw.terminate()
    with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=AUTH_TOML, state_dir=state) as gw:
        usage = usage_of(gw, name)
        assert billed(usage) == (reported, 4)
        assert usage["keys"][0]["reserved_tokens"] == 0


def test_a_window_rolls_over_and_the_budget_is_whole_again(gateway, node, tmp_path):
    root, neuron = node
    state = tmp_path / "state"
    cost = prompt_tokens(gateway) + 8
    budget = cost + cost // 2  # one answer a period
    # A 4-second window, which the admin API does not take: the test asks again until the window has rolled.
    name, key = make_db_key(state, KeySettings(budget_tokens=budget, budget_window="4s"))
    with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=AUTH_TOML, state_dir=state) as gw:
        client = oai(gw, key)
        refusal = wait_for(lambda: refused(chat(client, 8, stream=False)),
                           what="a refusal once the period's one answer is billed")
        assert 1 <= int(refusal.response.headers["retry-after"]) <= 4
        # Refused means the period's budget is spent: the next answer is billed in a new one.
        wait_for(lambda: isinstance(chat(client, 8, stream=False), int), what="the budget window to roll")
        rows = usage_of(gw, name)["usage"]
        assert len({r["period"] for r in rows}) >= 2
        assert all(r["total_tokens"] <= budget for r in rows) and all(r["period"].startswith("4s@") for r in rows)


def test_a_request_for_a_model_that_does_not_exist_is_no_usage(gateway):
    """A 404 reached no node and used nothing: counting it would let a key write any name it likes into the
    usage table (`cortex usage`, the console)."""
    for settings in ({}, {"budget_tokens": 100_000}):
        name, key = make_key(gateway, **settings)
        client = oai(gateway, key)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="<b>no-such-model</b>", messages=USER, max_tokens=2)
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        wait_for(lambda name=name: billed(usage_of(gateway, name))[1] == 1, what="the served request billed")
        assert [r["model"] for r in usage_of(gateway, name)["usage"]] == [MODEL], settings
