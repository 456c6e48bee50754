"""Priority and turns between tenants in a neuron's waiting queue, over real processes (issue 24, item 6).

The model's one slot (max_in_flight 1) is held by a stream the `slow` fault keeps generating until the test
closes it; the requests queued behind it are each seen waiting (the node's /health queue_depth) before the
next is sent, so the order they are served in is decided by the queue, never by timing. That order is read
from the neuron's access log: with one slot, a request ends before the next starts, and each line carries
the request's id. Then the gateway's side of the wire: the key's name reaches the neuron as its tenant, and
a client cannot choose its own priority or tenant.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cortex_gateway.auth import KEY_NAME
from cortex_gateway.proxy import caller_headers
from cortex_gateway.state import PRIORITY
from neuron.shared.protocol import PRIORITY_HEADER, TENANT_HEADER
from neuron.shared.request_context import request_id_middleware
from tests.helpers import NO_EOS, http_json, load_models, start_gateway, start_neuron, wait_for

MODEL = "tiny-gguf"
SERVED = re.compile(r"POST /v1/chat/completions 200 .*\[([\w.-]+)\]$")


@pytest.fixture(scope="module")
def node(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("priority")
    with start_neuron(root, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ({"model": MODEL, "max_in_flight": 1, "max_queue_depth": 16, "max_wait_s": 600},))
        yield root, neuron


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)


def queue_depth(neuron) -> int:
    _, health = http_json("GET", neuron.url + "/health")
    return next(m["queue_depth"] for m in health["models"] if m["id"] == MODEL)


def served_order(neuron, ids: list[str]) -> list[str]:
    """The given request ids in the order the neuron's access log shows them served."""
    seen = [m[1] for line in neuron.log().splitlines() if (m := SERVED.search(line))]
    return [rid for rid in seen if rid in ids]


def queued_behind_a_held_slot(neuron, requests: list[tuple[str, dict[str, str]]]) -> list[str]:
    """Hold the slot, queue `requests` (id, headers) one at a time, release the slot: their served order."""
    sdk = client(neuron.url)
    http_json("POST", neuron.url + "/debug/faults", {"model": MODEL, "fault": "slow", "delay_ms": 100})
    held = sdk.chat.completions.create(model=MODEL, stream=True, max_tokens=1500, logit_bias=NO_EOS,
                                       messages=[{"role": "user", "content": "go"}])
    with ThreadPoolExecutor(len(requests)) as pool:
        try:
            next(c for c in held if c.choices and c.choices[0].delta.content)  # generating: the slot is taken
            answers = []
            for i, (rid, headers) in enumerate(requests):
                answers.append(pool.submit(sdk.chat.completions.create, model=MODEL, max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"X-Request-ID": rid, **headers}))
                wait_for(lambda n=i + 1: queue_depth(neuron) == n, what=f"{rid} queued")
        finally:
            held.close()  # the client leaves: the neuron stops the generation and hands its slot on
        for answer in answers:
            assert answer.result().choices
    return served_order(neuron, [rid for rid, _ in requests])


def caller(priority: str | None = None, tenant: str | None = None) -> dict[str, str]:
    out = {PRIORITY_HEADER: priority} if priority else {}
    return out | ({TENANT_HEADER: tenant} if tenant else {})


def test_a_high_priority_request_overtakes_a_low_priority_queue(node):
    _, neuron = node
    lows = [(f"low-{i}", caller("low", "batch")) for i in range(3)]
    order = queued_behind_a_held_slot(neuron, [*lows, ("high-0", caller("high", "chat"))])
    assert order == ["high-0", "low-0", "low-1", "low-2"], order


def test_one_key_queueing_many_does_not_starve_another_of_the_same_priority(node):
    """Tenant a queues 6, then b queues 1: b is served second, right after a's first."""
    _, neuron = node
    many = [(f"a-{i}", caller(tenant="a")) for i in range(6)]
    order = queued_behind_a_held_slot(neuron, [*many, ("b-0", caller(tenant="b"))])
    assert order == ["a-0", "b-0", "a-1", "a-2", "a-3", "a-4", "a-5"], order


def test_an_unknown_priority_is_a_400_naming_the_header(node):
    _, neuron = node
    with pytest.raises(openai.BadRequestError) as err:
        client(neuron.url).chat.completions.create(model=MODEL, max_tokens=2, extra_headers=caller("urgent"),
                                                   messages=[{"role": "user", "content": "hi"}])
    message = err.value.body["message"]
    assert PRIORITY_HEADER in message and "high, normal, low" in message and "urgent" in message, message


def test_the_gateway_sends_the_key_name_and_never_the_clients_own_headers(node):
    """Through a gateway with keys, the neuron queues the request under the key's name (a name with a space
    and a non-ASCII letter, percent-encoded on the wire); the client's forged X-Cortex-* headers are dropped."""
    root, neuron = node
    (root / "keys.txt").write_text("sk-alice-0123456789  # alice böb\n")
    (root / "keys.txt").chmod(0o600)
    with start_gateway(root, {"n1": neuron.url}, extra_toml='[auth]\nkeys_file = "keys.txt"') as gateway:
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-alice-0123456789", max_retries=0)
        sdk.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}],
                                    extra_headers={"X-Request-ID": "gw-0", **caller("high", "mallory")})
    line = wait_for(lambda: next((x for x in neuron.log().splitlines() if x.endswith("[gw-0]")), None),
                    what="the neuron's access line")
    assert 'priority=normal tenant="alice böb"' in line, line


# -- the gateway's headers, in process --------------------------------------------------------------
async def headers_for(key_name: str | None, priority: str | None) -> dict[str, str]:
    """caller_headers() as the proxy calls it inside a request that auth gave `key_name` and the keys work
    `priority` (set on the request after the request-id middleware, as the real middlewares do)."""
    request = make_mocked_request("POST", "/v1/chat/completions", headers=caller("high", "forged"))

    async def handler(req: web.Request) -> web.Response:
        if key_name is not None:
            req[KEY_NAME] = key_name
        if priority is not None:
            req[PRIORITY] = priority
        return web.json_response(caller_headers())

    resp = await request_id_middleware(request, handler)
    return orjson.loads(resp.body)


@pytest.mark.parametrize("key_name, priority, expected", [
    (None, None, {}),  # no keys: one anonymous tenant at normal priority, whatever the client sent
    ("alice", None, {TENANT_HEADER: "alice"}),
    ("alice", "low", {TENANT_HEADER: "alice", PRIORITY_HEADER: "low"}),
    ("a b/ö", "high", {TENANT_HEADER: "a%20b%2F%C3%B6", PRIORITY_HEADER: "high"}),
])
async def test_the_upstream_headers_come_from_the_request_never_the_client(key_name, priority, expected):
    assert await headers_for(key_name, priority) == expected


def test_no_request_no_headers():
    assert caller_headers() == {}
