"""Which model the gateway evicts for a cold load, in process over a fake neuron (tests/gateway_inprocess.py):
its own in-flight count over a stale poll, and the next model when the node finds one busy.
"""

from __future__ import annotations

from tests.fake_neuron import FakeNeuron
from tests.gateway_inprocess import complete


async def crowded_node(fakes, gateway_over, busy: set[str]) -> FakeNeuron:
    """A node with m1 and m2 loaded and room for m3 only after an eviction; m2 used first, so LRU.

    Its polls keep showing m2 in flight, as a poll taken mid-request would; `busy` says whether m2
    really is (requests from elsewhere, which only the node knows about).
    """
    fake = await fakes.start("n1", loaded={"m1": 400, "m2": 400}, available={"m3": 300}, total_mb=1000)
    fake.reported_in_flight["m2"] = 1
    fake.busy = busy
    gw = await gateway_over(fake)
    for model in ("m2", "m1", "m3"):
        await complete(gw, model)
    return fake


# Regression test for a known bug (eviction trusted a polled in_flight): fails on code without the fix.
async def test_eviction_trusts_the_gateways_own_in_flight_over_a_stale_poll(fakes, gateway_over):
    """KNOWN BUG: the least recently used model must be evicted even when a stale poll shows it busy.

    Once a request is over, the gateway's own count (exact) says idle while a poll taken during it
    (up to a poll interval old) still says busy; trusting the poll protects the LRU model and
    evicts a warmer one instead.
    """
    fake = await crowded_node(fakes, gateway_over, busy=set())
    assert [u["model"] for u in fake.unloads] == ["m2"]
    assert set(fake.loaded) == {"m1", "m3"}


async def test_eviction_passes_over_a_model_the_node_finds_busy(fakes, gateway_over):
    """Only the node knows requests that came from elsewhere: asked to unload `if_idle`, it refuses
    (409 model_busy) and the gateway must evict the next model in order instead of failing."""
    fake = await crowded_node(fakes, gateway_over, busy={"m2"})
    assert [(u["model"], u.get("if_idle")) for u in fake.unloads] == [("m2", True), ("m1", True)]
    assert set(fake.loaded) == {"m2", "m3"}
