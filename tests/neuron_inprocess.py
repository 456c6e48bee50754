"""The neuron's own app (`create_app`, what `cortex neuron` serves) in this process, under aiohttp's test server.

The neuron's middle tier: parsing, structured outputs, generation and bad input run through the real routes,
engine and backends with the tiny models loaded, with no process to start, wait for or leave behind. The test
server listens on 127.0.0.1, so the official SDKs (async) talk to it as they would to a real neuron.

The app lives on the event loop it started on: a module's tests share one app, so they run on the module's
loop (`pytestmark = IN_MODULE_LOOP`, or the mark on each async test where a module has plain ones too, which
the mark would warn about). Nothing here blocks; a blocking call (urllib, the sync SDK) against this server
would wait for a loop it is itself holding.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from neuron.server.app import create_app
from neuron.shared.config import NeuronConfig

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
TINY = ("tiny-gguf", "tiny-hf")


class InProcessNeuron:
    """One in-process neuron: its test client, an AsyncOpenAI on its /v1, and plain JSON calls."""

    def __init__(self, client: TestClient):
        self.client = client
        self.url = str(client.make_url("")).rstrip("/")
        self.openai = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    async def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A JSON call returning (status, parsed body), as tests.helpers.http_json does for a process."""
        data = None if body is None else json.dumps(body).encode()
        return await self.send(path, data, method)

    async def send(self, path: str, data: bytes | None, method: str = "POST") -> tuple[int, dict]:
        """Raw bytes as the body (malformed JSON included): (status, parsed answer)."""
        async with self.client.request(method, path, data=data,
                                       headers={"Content-Type": "application/json"}) as resp:
            return resp.status, json.loads(await resp.read() or b"{}")

    async def metric(self, series: str) -> float:
        """The value of one series (exact name and labels) in the neuron's /metrics, 0 when absent."""
        async with self.client.get("/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    async def stream_lines(self, path: str, body: dict) -> list[str]:
        """A streamed answer's SSE lines, blank ones left out; the Content-Type checked on the way."""
        async with self.client.post(path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            return [line for line in (await resp.text()).splitlines() if line.strip()]


async def streamed_text(stream) -> str:
    """The text of a streamed chat answer from the async SDK, its chunks' content joined."""
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@contextlib.asynccontextmanager
async def serve_in_process(models_dir: Path, load: tuple[str, ...] = TINY) -> AsyncIterator[InProcessNeuron]:
    """A neuron over `models_dir` with `load` loaded; stopped (its models unloaded) however the block ends,
    a failed load included."""
    config = NeuronConfig(port=0, name="n1", models_dir=models_dir, cpu_memory_mb=4000, token="")
    client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    node = None
    try:
        await client.start_server()
        node = InProcessNeuron(client)
        for model in load:
            status, body = await node.call("POST", "/models/load", {"model": model})
            assert status == 200, body
        yield node
    finally:
        if node is not None:
            await node.openai.close()
        await client.close()
