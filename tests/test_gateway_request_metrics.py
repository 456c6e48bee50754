"""What the gateway counts: requests refused before dispatch, model labels bounded by the catalog (the app in
process over a fake neuron, tests/gateway_inprocess.py), and a stream's usage read however its end arrives
(the relay alone, over scripted upstreams).
"""

from __future__ import annotations

import asyncio

from tests.gateway_inprocess import body


# -- metrics of refused and unknown requests -------------------------------------------------------
async def test_requests_refused_before_dispatch_are_counted(fakes, gateway_over):
    gw = await gateway_over(await fakes.start("n1", loaded={"m": 100}))
    resp = await gw.client.post("/v1/messages", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await gw.client.post("/v1/chat/completions", json={"messages": []})  # no model
    assert resp.status == 400
    assert gw.metric('cortex_requests_total{endpoint="messages",model="unknown",node="none",status="400"}') == 1
    assert gw.metric('cortex_requests_total{endpoint="chat",model="unknown",node="none",status="400"}') == 1


async def test_a_model_name_the_catalog_does_not_know_is_one_label(fakes, gateway_over):
    """Any client can send any name: as labels they would make unbounded series."""
    gw = await gateway_over(await fakes.start("n1", loaded={"m": 100}))
    for name in ("made-up-1", "made-up-2"):
        resp = await gw.client.post("/v1/chat/completions", json=body(name, stream=False))
        assert resp.status == 404
    text = gw.metrics.render().decode()
    assert "made-up" not in text
    assert gw.metric('cortex_requests_total{endpoint="chat",model="unknown",node="none",status="404"}') == 2




# -- the relay alone, over scripted upstreams ---------------------------------------------------
async def test_the_usage_is_read_however_the_stream_s_end_is_split():
    """On a busy machine the neuron's last write (finish, usage, [DONE]) arrives in many reads: the usage
    must still count (keeping the last two reads lost it, seen once in the Prometheus test)."""
    from cortex_gateway.metrics import RequestRecord
    from cortex_gateway.proxy import relay_stream

    end = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
           b': cortex-usage {"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}\n\ndata: [DONE]\n\n')
    pieces = [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'] + [end[i:i + 7]
                                                                                  for i in range(0, len(end), 7)]

    class Upstream:
        class content:  # noqa: N801 - aiohttp's attribute name
            @staticmethod
            async def iter_any():
                for piece in pieces:
                    yield piece

        def release(self):
            pass

    class Client:
        def __init__(self):
            self.sent = b""

        async def write(self, data):
            self.sent += data

    client, rec = Client(), RequestRecord(model="m", endpoint="chat", started=0.0)
    await relay_stream(Upstream(), client, rec)
    assert client.sent == b"".join(pieces) and (rec.prompt_tokens, rec.completion_tokens) == (5, 8)


async def test_the_relay_ends_at_done_without_waiting_for_the_upstreams_end():
    """A client closes as soon as it has [DONE], and a client that leaves cancels the handler: a relay still
    waiting for the neuron's end of stream then lost the usage and logged a 500 (seen once on a busy machine)."""
    from cortex_gateway.metrics import RequestRecord
    from cortex_gateway.proxy import relay_stream

    end = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
           b': cortex-usage {"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}\n\ndata: [DO')
    released = []

    class Upstream:
        class content:  # noqa: N801 - aiohttp's attribute name
            @staticmethod
            async def iter_any():
                yield b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
                yield end
                yield b"NE]\n\n"  # [DONE], split across reads
                await asyncio.Event().wait()  # the end of the stream, late: never, here

        def release(self):
            released.append(True)

    class Client:
        async def write(self, data):
            pass

    rec = RequestRecord(model="m", endpoint="chat", started=0.0)
    async with asyncio.timeout(5):
        await relay_stream(Upstream(), Client(), rec)
    assert (rec.prompt_tokens, rec.completion_tokens) == (5, 8) and rec.finished_at is not None and released
