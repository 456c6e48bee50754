"""The gateway's cost per idle node, and whether its hot path grows with the fleet (issue 25, item 3).

Simulated nodes speak the real node protocol: their answers are built from the protocol's own types
(neuron/shared/protocol.py) and tagged by the neuron's own conditional answers (neuron/server/conditional.py),
so they cannot drift from what a neuron sends. Every node has 20 models loaded and 200 available, drawn from
one shared pool of 400 ids (so the catalog has 400 entries, each on many nodes), and `hot`, the model the
chat requests ask for, is loaded on two nodes at every fleet size. All nodes live in one process (one aiohttp
app listening on one port per node, the port telling the node), apart from the gateway's, so the gateway's
CPU is measured alone: a real `cortex serve` over them, at its default poll interval (2 s).

For each fleet size it measures, for the gateway of this tree and, with `--before DIR`, for the gateway of
another checkout (a `git worktree add DIR <commit>`; the same simulated nodes answer both):
- idle CPU: the gateway process's CPU time over an idle interval with its polls running, as % of one core;
- RSS (MiB) after that interval;
- /v1/models p50 (ms);
- the chat hot path's added p50 (ms): a non-streaming request for `hot` through the gateway against the same
  request sent to the node directly;
- change to routing (s): a node starts listing a new model loaded; how long until a request for it is routed
  there (the median of five, each at a random phase of the poll round).

    python benchmarks/fleet_scale.py [--sizes 10,100,1000] [--before /tmp/before] [--idle-s 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from neuron.server import conditional  # noqa: E402
from neuron.server.health_feed import HealthFeed, stream_health  # noqa: E402
from neuron.shared import health_stream  # noqa: E402
from neuron.shared.protocol import AvailableModel, DeviceInfo, Health, ModelInfo, ModelLoad  # noqa: E402
from tests.helpers import CORTEX, free_port, http_json  # noqa: E402

POOL = [f"model-{i:03d}" for i in range(400)]
LOADED, AVAILABLE, HOT, FRESH = 20, 200, "hot", "fresh"
COMPLETION = orjson.dumps({
    "id": "chatcmpl-sim", "object": "chat.completion", "created": 0, "model": HOT,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}})
CHAT = orjson.dumps({"model": HOT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
POLL_INTERVAL_S = 2.0  # the gateway's default poll_interval_s, which the benchmark's gateways run at
KEYS = ("nodes", "idle_cpu_pct", "rss_mb", "models_p50_ms", "chat_added_p50_ms", "change_to_routing_s")


# -- the simulated nodes (their own process) ---------------------------------------------------------------
class SimNode:
    """One node's listing, and its three polled answers serialised once per change, with their tags."""

    def __init__(self, index: int):
        self.name = f"n{index:04d}"
        self.available = [POOL[(7 * index + j) % len(POOL)] for j in range(AVAILABLE)]
        self.loaded = self.available[:LOADED]
        if index < 2:  # the chat model, on two nodes whatever the fleet's size
            self.loaded = [HOT, *self.loaded[1:]]
        self.started = time.monotonic()
        self.answers: dict[str, tuple[bytes, str]] = {}
        self.build()
        self.feed = HealthFeed(self.health_now)  # the neuron's own feed: GET /health/stream as a neuron sends it

    def health_now(self) -> tuple[Health, str]:
        self.health.uptime_s = round(time.monotonic() - self.started, 3)
        return self.health, self.answers["/health"][1]

    def build(self) -> None:
        models = {"models": [ModelInfo(m, "sim", devices=["cpu"], memory_mb=100.0, context_size=4096,
                                       path=f"/sim/{m}").to_dict() for m in self.loaded], "failures": {}, "pulls": []}
        available = {"models": [AvailableModel(m, "gguf", f"{m}.gguf", 100.0, 120.0).to_dict()
                                for m in self.available]}
        self.answers = {"/models": _tagged(models), "/models/available": _tagged(available)}
        health = Health("ok", self.name, 0.0, [DeviceInfo("cpu", total_mb=64_000, free_mb=62_000, used_mb=2_000)],
                        [ModelLoad(m, memory_mb=100.0) for m in self.loaded],
                        models_etag=self.answers["/models"][1], available_etag=self.answers["/models/available"][1])
        tag = conditional.tag_of(orjson.dumps(health.to_dict()))
        self.health = health
        self.answers["/health"] = (b"", tag)

    def answer(self, request: web.Request) -> web.Response:
        path = request.path
        body, tag = self.answers[path]
        if path == "/health" and not conditional.matches(request, tag):
            self.health.uptime_s = round(time.monotonic() - self.started, 3)
            body = orjson.dumps(self.health.to_dict())
        return conditional.answer(request, body, tag)


def _tagged(payload: dict) -> tuple[bytes, str]:
    body = orjson.dumps(payload)
    return body, conditional.tag_of(body)


def sim_app(nodes: dict[int, SimNode]) -> web.Application:
    def node_of(request: web.Request) -> SimNode:
        return nodes[request.transport.get_extra_info("sockname")[1]]

    async def polled(request: web.Request) -> web.Response:
        return node_of(request).answer(request)

    async def stream(request: web.Request) -> web.StreamResponse:
        return await stream_health(request, node_of(request).feed)

    async def chat(_request: web.Request) -> web.Response:
        return web.Response(body=COMPLETION, content_type="application/json")

    async def set_loaded(request: web.Request) -> web.Response:
        """The benchmark's own control: the node now lists `model` loaded (or no longer, with `gone`)."""
        node, body = node_of(request), await request.json()
        node.loaded = [m for m in node.loaded if m != body["model"]] + ([] if body.get("gone") else [body["model"]])
        node.build()
        return web.json_response({"loaded": node.loaded})

    app = web.Application()
    for path in ("/health", "/models", "/models/available"):
        app.router.add_get(path, polled)
    app.router.add_get(health_stream.PATH, stream)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/sim/loaded", set_loaded)
    return app


async def run_sim(count: int, ports_file: Path) -> None:
    nodes: dict[int, SimNode] = {}
    runner = web.AppRunner(sim_app(nodes), access_log=None)
    await runner.setup()
    ports = []
    for i in range(count):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        nodes[port] = SimNode(i)
        ports.append(port)
    ports_file.write_text(json.dumps(ports))
    await asyncio.Event().wait()


# -- the measurements (this process) -----------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start_gateway(root: Path, ports: list[int], tmp: Path) -> tuple[subprocess.Popen, str]:
    port, metrics_port = free_port(), free_port()
    lines = ["[gateway]", f'listen = "127.0.0.1:{port}"', f'metrics_listen = "127.0.0.1:{metrics_port}"',
             f'state_dir = "{tmp / "state"}"']
    for i, p in enumerate(ports):
        lines += ["[[neurons]]", f'name = "n{i:04d}"', f'endpoint = "http://127.0.0.1:{p}"']
    (tmp / "cortex.toml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(root)}  # the checkout's code, not the installed tree's
    proc = subprocess.Popen(CORTEX + ["serve", "--config", str(tmp / "cortex.toml"), "--log-level", "warning"],
                            cwd=root, env=env, stdout=open(tmp / "gateway.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_json("GET", url + "/health", timeout=5)[0] == 200, 300, f"the gateway ({tmp})")
    return proc, url


async def latencies(session: aiohttp.ClientSession, method: str, url: str, n: int, data: bytes | None = None,
                    warm: int = 20) -> list[float]:
    out = []
    for i in range(n + warm):
        t = time.perf_counter()
        async with session.request(method, url, data=data, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            assert r.status == 200, (url, r.status)
        if i >= warm:
            out.append(time.perf_counter() - t)
    return out


async def change_to_routing(session: aiohttp.ClientSession, gateway: str, node_url: str) -> float:
    """A node starts listing a new model loaded: seconds until the gateway routes a request for it (then
    undone; each time a name never used before, so a gateway that has not yet seen an undo cannot answer)."""
    fresh = f"{FRESH}-{time.monotonic_ns()}"
    body = orjson.dumps({"model": fresh, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    async with session.post(node_url + "/sim/loaded", json={"model": fresh}) as r:
        r.raise_for_status()
    started = time.perf_counter()
    while True:
        async with session.post(gateway + "/v1/chat/completions", data=body,
                                headers={"Content-Type": "application/json"}) as r:
            await r.read()
            if r.status == 200:
                break
        if time.perf_counter() - started > 60:
            raise RuntimeError("the change never reached routing")
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    async with session.post(node_url + "/sim/loaded", json={"model": fresh, "gone": True}) as r:
        r.raise_for_status()
    return seconds


async def measure_gateway(pid: int, gateway: str, node0: str, count: int, idle_s: float) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.sleep(5)  # a couple of poll rounds: anything a first poll left to settle, settled
        cpu = proc_cpu_s(pid)
        t = time.monotonic()
        await asyncio.sleep(idle_s)
        idle_cpu = 100 * (proc_cpu_s(pid) - cpu) / (time.monotonic() - t)
        rss = proc_rss_mb(pid)
        models = await latencies(session, "GET", gateway + "/v1/models", 30, warm=3)
        direct = await latencies(session, "POST", node0 + "/v1/chat/completions", 400, CHAT, warm=50)
        through = await latencies(session, "POST", gateway + "/v1/chat/completions", 400, CHAT, warm=50)
        changes = []
        for _ in range(5):  # at a random phase of the poll round each time: the median is then about half
            await asyncio.sleep(random.uniform(0, POLL_INTERVAL_S))  # an interval plus the poll's own time
            changes.append(await change_to_routing(session, gateway, node0))
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    return {"nodes": count, "idle_cpu_pct": round(idle_cpu, 2), "rss_mb": round(rss, 1),
            "models_p50_ms": round(ms(models), 2), "chat_added_p50_ms": round(ms(through) - ms(direct), 3),
            "change_to_routing_s": round(statistics.median(changes), 3)}


def one_size(count: int, roots: dict[str, Path], idle_s: float) -> dict[str, dict]:
    tmp = Path(tempfile.mkdtemp(prefix=f"fleet-scale-{count}-"))
    ports_file = tmp / "ports.json"
    sim = subprocess.Popen([sys.executable, __file__, "--sim", str(count), "--ports-file", str(ports_file)],
                           stdout=open(tmp / "sim.log", "wb"), stderr=subprocess.STDOUT)
    results = {}
    try:
        wait_until(ports_file.exists, 120, "the simulated nodes")
        ports = json.loads(ports_file.read_text())
        for label, root in roots.items():
            (tmp / label).mkdir()
            gateway, url = start_gateway(root, ports, tmp / label)
            try:
                results[label] = asyncio.run(measure_gateway(gateway.pid, url, f"http://127.0.0.1:{ports[0]}",
                                                             count, idle_s))
            finally:
                gateway.terminate()
                gateway.wait(60)
    finally:
        sim.terminate()
        sim.wait(30)
    return results


def table(rows: list[tuple[str, dict]]) -> str:
    head = ["gateway", *KEYS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([label, *(str(r[k]) for k in KEYS)]) + " |" for label, r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--before", type=Path, help="a checkout of the gateway to measure first (git worktree)")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="one JSON object per fleet size (this tree's gateway)")
    ap.add_argument("--sim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sim:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        asyncio.run(run_sim(args.sim, args.ports_file))
        return
    roots = {"before": args.before} if args.before else {}
    roots["after"] = ROOT
    rows = []
    for count in (int(s) for s in args.sizes.split(",")):
        results = one_size(count, roots, args.idle_s)
        if args.json:
            print(json.dumps(results["after"]) if len(results) == 1 else
                  json.dumps({**results["after"], "before": results.get("before")}), flush=True)
        rows += [(f"{label} ({count})", r) for label, r in results.items()]
    if not args.json:
        print(table(rows))


if __name__ == "__main__":
    main()
