"""Where a request goes when a node fails under it or is drained: the gateway's app in process over fake
neurons (tests/gateway_inprocess.py).

A failure no byte of which reached the client is retried elsewhere; one after bytes ends the stream with an
error; a drained node finishes what it runs and takes nothing new.
"""

from __future__ import annotations

import pytest

from tests.gateway_inprocess import OPENAI, ROUTES, complete, open_stream, read_until, rest, wait


# -- failures before the answer -----------------------------------------------------------
@pytest.mark.parametrize("failure", ["drop", "recovering"])
async def test_node_failing_before_answering_is_retried_on_another(fakes, gateway_over, failure):
    """The client must never see a failure no byte of which reached it: the gateway retries elsewhere.

    Both fakes share one failure script, so whichever node the gateway picks first fails. A dropped
    connection is sent again once on the same node first (it is most often an idle connection the node
    closed), so a node that keeps dropping drops twice.
    """
    expected = [failure] * (2 if failure == "drop" else 1)
    script = list(expected)  # consumed as the fakes fail
    first = await fakes.start("n1", loaded={"m": 100}, failures=script)
    second = await fakes.start("n2", loaded={"m": 100}, failures=script)
    gw = await gateway_over(first, second)
    async with gw.openai() as client:
        answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    failed, answered = (first, second) if first.failed else (second, first)
    assert failed.failed == expected and len(failed.chats) == len(expected)
    assert answer.choices[0].message.content == f"hello from {answered.name}"
    assert len(answered.chats) == 1
    assert gw.metric('cortex_retries_total{model="m"}') == 1


async def test_a_connection_dropped_once_by_a_healthy_node_is_sent_again_there(fakes, gateway_over):
    """An idle pooled connection the node closes as we send on it is no reason to call the node unusable:
    on a one-node fleet that became a 503 (seen with real clients)."""
    only = await fakes.start("n1", loaded={"m": 100}, failures=["drop"])
    gw = await gateway_over(only)
    answer = await complete(gw, "m")
    assert answer["choices"][0]["message"]["content"] == "hello from n1" and len(only.chats) == 2
    assert gw.metric('cortex_retries_total{model="m"}') == 0


async def test_unreachable_node_fails_over_to_another(fakes, gateway_over):
    """A node whose server is gone is skipped within the same request, not after polls notice."""
    dead = await fakes.start("n1", loaded={"m": 100})
    alive = await fakes.start("n2", loaded={"m": 100})
    alive.reported_in_flight["m"] = 3  # busier as polled, so the gateway tries the dead node first
    gw = await gateway_over(dead, alive)
    await dead.close()
    answer = await complete(gw, "m")
    assert answer["choices"][0]["message"]["content"] == "hello from n2"
    assert gw.metric('cortex_retries_total{model="m"}') == 1  # proves the dead node was tried


# -- failures mid-answer --------------------------------------------------------------------
@ROUTES
async def test_node_dying_mid_stream_ends_the_stream_with_an_error(fakes, gateway_over, route):
    """Bytes already reached the client, so no retry: the client must learn the answer is cut, not hang."""
    fake = await fakes.start("n1", loaded={"m": 100})
    death = fake.die_mid_stream()
    gw = await gateway_over(fake)
    resp = await open_stream(gw, route)
    await read_until(resp, b"from")  # the first two pieces reached the client...
    await wait(death.arrived)
    death.release()  # ...then the node dies
    tail = await rest(resp)
    assert b'"n1"' not in tail  # the third piece never came
    assert tail.startswith(route.error), tail
    if route is OPENAI:
        assert b'"code":"upstream_failed"' in tail and tail.rstrip().endswith(OPENAI.done), tail
    assert gw.metric('cortex_errors_total{model="m",node="n1",type="upstream_failed"}') == 1




# -- draining -----------------------------------------------------------------------------
async def test_a_drained_node_takes_nothing_new_and_finishes_what_it_has(fakes, gateway_over):
    """`cortex drain`: an upgrade must not drop a request. What runs there finishes; new requests and cold
    loads go elsewhere; undrained, it takes requests again."""
    first = await fakes.start("n1", loaded={"m": 100}, available={"cold": 100})
    second = await fakes.start("n2", loaded={"m": 100}, available={"cold": 100})
    second.reported_in_flight["m"] = 5  # busier as polled: n1 is the one chosen while both take requests
    gw = await gateway_over(first, second)
    held = first.hold_prefill()  # a stream running on n1, held until the test lets it go on
    running = await open_stream(gw, OPENAI)
    await wait(held.arrived)
    drained = await gw.client.post("/admin/drain", json={"node": "n1"})
    assert (await drained.json()) == {"node": "n1", "draining": True, "in_flight": 1}
    for _ in range(3):
        assert (await complete(gw, "m"))["choices"][0]["message"]["content"] == "hello from n2"
    assert (await complete(gw, "cold"))["choices"][0]["message"]["content"] == "hello from n2"
    assert first.loads == [], "no cold load on a draining node"
    status = await (await gw.client.get("/admin/status")).json()
    assert next(n for n in status["nodes"] if n["name"] == "n1")["draining"] is True
    held.release()
    tail = await rest(running)
    assert b'"content":"n1"' in tail and OPENAI.done in tail, "the request running there finished"
    await gw.client.post("/admin/undrain", json={"node": "n1"})
    assert (await complete(gw, "m"))["choices"][0]["message"]["content"] == "hello from n1"
