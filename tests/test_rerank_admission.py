"""Rerank requests are admitted as the model's other requests are (in process, tests/neuron_inprocess.py): one
of its in-flight slots each, a queue behind them, and the queue's 429 once it is full."""

from __future__ import annotations

import asyncio

import pytest

from neuron.server.state import REGISTRY
from tests.helpers import make_tiny
from tests.neuron_inprocess import serve_in_process

BODY = {"model": "rerank", "query": "sunny", "documents": ["Paris is sunny.", "Rain in London."]}


@pytest.mark.asyncio
async def test_a_rerank_waits_for_a_slot_and_a_full_queue_refuses_the_next(tmp_path):
    make_tiny(tmp_path / "rerank", "hf", "--kind", "rerank")
    async with serve_in_process(tmp_path, load=()) as node:
        status, body = await node.call("POST", "/models/load", {"model": "rerank", "max_in_flight": 1,
                                                                "max_queue_depth": 1})
        assert status == 200, body
        admission = node.client.server.app[REGISTRY].models["rerank"].admission
        async with admission.slot():  # the model's one slot, held: the next rerank must queue
            queued = asyncio.create_task(node.call("POST", "/v1/rerank", BODY))
            while admission.queue_depth == 0:  # until the request is in the queue (no timing involved)
                await asyncio.sleep(0)
            status, refused = await node.call("POST", "/v1/rerank", BODY)
            assert status == 429 and refused["error"]["code"] == "queue_full"
            assert not queued.done()
        status, answered = await queued  # the slot given back: the queued request runs
        assert status == 200 and len(answered["results"]) == 2
        assert await node.metric('cortex_neuron_tokens_total{kind="prompt",model="rerank"}') \
            == answered["usage"]["prompt_tokens"]
