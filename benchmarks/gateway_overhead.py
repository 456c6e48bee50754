"""The gateway's added latency and throughput, against calling the same fake-fast upstream directly.

Goals (issue 3), on 2 cores shared by client, gateway and upstream:
- added p50 latency under 1 ms for one non-streaming client;
- through-gateway throughput at 32 concurrent clients >= 0.4 x direct without streaming,
  >= 0.6 x direct with streaming.

    python benchmarks/gateway_overhead.py [--seconds 3] [--rounds 3] [--requests 1500]

A bare aiohttp pass-through (benchmarks/bare_proxy.py) is measured in the same run: the
floor that any aiohttp gateway pays on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import CORTEX, free_port, http_json  # noqa: E402

console = Console(width=150)
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


def start(args: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http_json("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not come up; see {log}")


async def one(session, url: str, payload: bytes, stream: bool) -> None:
    async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
        if stream:
            async for _ in resp.content.iter_any():
                pass
        else:
            await resp.read()
        assert resp.status == 200, resp.status


async def latencies(url: str, n: int) -> list[float]:
    payload = orjson.dumps(BODY)
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 100):
            t = time.perf_counter()
            await one(session, url, payload, False)
            if i >= 100:  # warm-up
                out.append(time.perf_counter() - t)
    return out


async def throughput(url: str, stream: bool, clients: int, seconds: float) -> float:
    payload = orjson.dumps({**BODY, "stream": stream})
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session):
        nonlocal done
        while time.perf_counter() < stop_at:
            await one(session, url, payload, stream)
            done += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one(session, url, payload, stream)
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        return done / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1500)
    args = ap.parse_args()
    tmp = Path(subprocess.check_output(["mktemp", "-d"]).decode().strip())
    up_port, gw_port, metrics_port, bare_port = free_port(), free_port(), free_port(), free_port()
    upstream = start([sys.executable, str(ROOT / "benchmarks" / "fake_neuron.py"), str(up_port)], up_port,
                     tmp / "upstream.log")
    (tmp / "cortex.toml").write_text(f'[gateway]\nlisten = "127.0.0.1:{gw_port}"\n'
                                     f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
                                     f'state_dir = "{tmp / "state"}"\n'  # not the user's ~/.cortex/state
                                     f'[[neurons]]\nname = "fake"\nendpoint = "http://127.0.0.1:{up_port}"\n')
    gateway = start(CORTEX + ["serve", "--config", str(tmp / "cortex.toml"), "--log-level", "warning"], gw_port,
                    tmp / "gateway.log")
    bare = start([sys.executable, str(ROOT / "benchmarks" / "bare_proxy.py"), str(bare_port),
                  f"http://127.0.0.1:{up_port}"], bare_port, tmp / "bare.log")
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
    try:
        console.log(f"latency: {args.requests} sequential non-streaming requests each way")
        lat_d, lat_g = asyncio.run(latencies(direct, args.requests)), asyncio.run(latencies(through, args.requests))
        rows = []
        for stream in (False, True):
            kind = "streaming" if stream else "non-streaming"
            console.log(f"throughput: 32 clients, {kind}, {args.rounds} rounds of {args.seconds:g}s each way")
            # Interleaved rounds, medians: the machine's speed drifts more between runs than
            # the gateway's overhead, so each round measures all three back to back.
            rounds = [[asyncio.run(throughput(url, stream, 32, args.seconds)) for url in (direct, through, bare_url)]
                      for _ in range(args.rounds)]
            d, g, b = (statistics.median(r[i] for r in rounds) for i in range(3))
            rows.append((kind, d, g, b))
    finally:
        bare.terminate()
        gateway.terminate()
        upstream.terminate()
        gateway.wait(30)
    table = Table(title="Gateway overhead vs direct to the same fake-fast upstream")
    for col in ("measure", "direct", "through gateway", "added / ratio", "goal", "bare aiohttp proxy (ratio)"):
        table.add_column(col, justify="right")
    for q in (50, 99):
        d, g = pct(lat_d, q), pct(lat_g, q)
        table.add_row(f"latency p{q} (ms)", f"{d:.3f}", f"{g:.3f}", f"+{g - d:.3f} ms", "< 1 ms" if q == 50 else "",
                      "")
    for (kind, d, g, b), goal in zip(rows, ("0.4", "0.6"), strict=True):
        table.add_row(f"req/s, 32 clients, {kind}", f"{d:.0f}", f"{g:.0f}", f"{g / d:.3f}", f">= {goal}",
                      f"{b:.0f} ({b / d:.3f})")
    console.print(table)


if __name__ == "__main__":
    main()
