"""Keys from the state database against keys of the config file, and what a budget costs (issue 24).

One gateway over the fake-fast upstream, with a config-file key, a database key made through
/admin/keys, one with a TPM limit only, and one with a budget and a TPM limit (both large enough never
to refuse); a gateway without keys beside it. Every key is metered: a key without a budget has its
usage written once, when the request ends (one commit); a budgeted one reserves its worst case at
admission and settles at the end (two commits). A TPM limit takes from the key's bucket, a row of the
database, at admission and gives back at the end (two writes more, not forced to the disk). Goal: a
database key within 10% of a config-file key (throughput ratio >= 0.9); the TPM and budgeted rows are
the price of exactness across gateways, the keyless one that of metering.

    python benchmarks/keys_overhead.py [--seconds 3] [--rounds 3] [--requests 1000]
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
from benchmarks.gateway_overhead import BODY, pct, start  # noqa: E402
from tests.helpers import CORTEX, free_port, http_json  # noqa: E402

console = Console(width=150)
ADMIN, CONFIG_KEY = "bench-admin-key", "bench-config-key"


async def one(session, url: str, payload: bytes, headers: dict) -> None:
    async with session.post(url, data=payload, headers=headers) as resp:
        await resp.read()
        assert resp.status == 200, (resp.status, await resp.text())


def headers_for(key: str | None) -> dict:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


async def latencies(url: str, key: str | None, n: int) -> list[float]:
    payload, headers, out = orjson.dumps(BODY), headers_for(key), []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 100):
            t = time.perf_counter()
            await one(session, url, payload, headers)
            if i >= 100:  # warm-up
                out.append(time.perf_counter() - t)
    return out


async def throughput(url: str, key: str | None, clients: int, seconds: float) -> float:
    payload, headers, done = orjson.dumps(BODY), headers_for(key), 0
    stop_at = time.perf_counter() + seconds

    async def worker(session):
        nonlocal done
        while time.perf_counter() < stop_at:
            await one(session, url, payload, headers)
            done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        await one(session, url, payload, headers)
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        return done / (time.perf_counter() - started)


def gateway(tmp: Path, name: str, upstream: int, auth: str) -> tuple[subprocess.Popen, str]:
    port, metrics_port = free_port(), free_port()
    config = tmp / f"{name}.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
                      f'state_dir = "{tmp / name}"\n[[neurons]]\nname = "fake"\n'
                      f'endpoint = "http://127.0.0.1:{upstream}"\n{auth}')
    proc = start(CORTEX + ["serve", "--config", str(config), "--log-level", "warning"], port, tmp / f"{name}.log")
    return proc, f"http://127.0.0.1:{port}"


def make_key(url: str, body: dict) -> str:
    status, made = http_json("POST", url + "/admin/keys", body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, made
    return made["key"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(subprocess.check_output(["mktemp", "-d"]).decode().strip())
    up_port = free_port()
    upstream = start([sys.executable, str(ROOT / "benchmarks" / "fake_neuron.py"), str(up_port)], up_port,
                     tmp / "upstream.log")
    keyed, keyed_url = gateway(tmp, "keyed", up_port, f'[auth]\nkeys = ["{CONFIG_KEY}"]\nadmin_keys = ["{ADMIN}"]\n')
    open_gw, open_url = gateway(tmp, "open", up_port, "")
    try:
        plain = make_key(keyed_url, {"name": "bench-plain"})
        tpm_only = make_key(keyed_url, {"name": "bench-tpm", "tpm": 10**12})
        budgeted = make_key(keyed_url, {"name": "bench", "budget_tokens": 10**15, "budget_window": "1d",
                                        "tpm": 10**12})
        cases = {"no keys (not metered)": (open_url, None), "config-file key": (keyed_url, CONFIG_KEY),
                 "database key": (keyed_url, plain), "database key, TPM": (keyed_url, tpm_only),
                 "database key, budget + TPM": (keyed_url, budgeted)}
        rows = measure(cases, args)
    finally:
        for proc in (keyed, open_gw, upstream):
            proc.terminate()
            proc.wait(30)
    report(rows)


def measure(cases: dict, args) -> dict[str, tuple[float, float]]:
    """Per case, (p50 latency in ms, median throughput at 32 clients); rounds interleaved, so the machine's
    drift between runs falls on every case alike."""
    console.log(f"latency: {args.requests} sequential requests per case; throughput: 32 clients, "
                f"{args.rounds} rounds of {args.seconds:g}s")
    p50 = {name: pct(asyncio.run(latencies(url + "/v1/chat/completions", key, args.requests)), 50)
           for name, (url, key) in cases.items()}
    rounds = [{name: asyncio.run(throughput(url + "/v1/chat/completions", key, 32, args.seconds))
               for name, (url, key) in cases.items()} for _ in range(args.rounds)]
    return {name: (p50[name], statistics.median(r[name] for r in rounds)) for name in cases}


def report(rows: dict[str, tuple[float, float]]) -> None:
    base_lat, base_rps = rows["config-file key"]
    table = Table(title="Keys from the database against config-file keys, one gateway, the fake-fast upstream")
    for col in ("key", "p50 latency (ms)", "vs config key", "req/s, 32 clients", "ratio to config key", "goal"):
        table.add_column(col, justify="right")
    for name, (lat, rps) in rows.items():
        goal = ">= 0.9" if name == "database key" else ""
        table.add_row(name, f"{lat:.3f}", f"{lat - base_lat:+.3f} ms", f"{rps:.0f}", f"{rps / base_rps:.3f}", goal)
    console.print(table)


if __name__ == "__main__":
    main()
