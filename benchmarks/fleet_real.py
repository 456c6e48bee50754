"""(a) of the fleet benchmark at its smallest size with real neurons, against the simulation (issue 23).

A hot model's aggregate tok/s with 1 node and with 2 (`max_replicas = 2`, `scale_out_queue = 1`, the model
loaded on the first node at the start), as benchmarks/fleet.py's (a) measures it over simulated nodes, here
over two real `cortex neuron` processes and a real `cortex serve` (started as the tests start them,
tests/helpers.py) with a tiny GGUF from `cortex tiny-model`. The neuron's `slow` fault adds `--delay-ms` to
every token on the node's device thread, so a node's batch decodes at most 1000 / delay_ms tok/s in all
(4 slots share the thread) and this 2-core machine's own speed decides little of the figure. The simulation
is then run at the same size and speed: 4 slots sharing the rate one real node reached alone in this run
(what the tiny model's compute, the gateway and the client add to each token on these cores is then in
both), and the cold load the real second node took; the two ratios, 2 nodes over 1, are printed side by
side, so what differs is what the simulation leaves out (two nodes sharing the cores, the neuron's queue).
The real runs alternate 1 node and 2 for `--rounds` rounds, and the real figures are the rounds' means:
other work on a shared machine changes a real node's speed from one run to the next (each round's own
ratio is printed too, to show how much).

Tokens are the streams' own usage (`completion_tokens`), each stream's spread over its content events, and
counted by when they arrived, as fleet.py counts them; streams still open at the end are cut there (each of
their events a token), so a real node's queue need not drain.

    python benchmarks/fleet_real.py [--seconds 10] [--streams 16] [--delay-ms 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import fleet  # noqa: E402
from sim_node import Speed  # noqa: E402

from tests.helpers import NO_EOS, http_json, make_tiny, metric, start_gateway, start_neuron  # noqa: E402

console = Console(width=150)
MODEL = fleet.MODEL
TOKENS = 32  # an answer, as fleet.py's (a)
SCHEDULING = "[scheduling]\nscale_out_queue = 1\nprefix_map_entries = 0"


async def stream(session: aiohttp.ClientSession, url: str, i: int, seen: list[tuple[float, float]]) -> None:
    """One streamed chat (end tokens banned, so each runs to TOKENS); its tokens by arrival go to `seen`."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"stream {i}: go on"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}, "logit_bias": NO_EOS}
    times, usage = [], {}
    try:
        async for data in fleet.chat_events(session, url, body):
            assert "error" not in data, data
            usage = data.get("usage") or usage
            if fleet.delta_text(data):
                times.append(time.monotonic())
    finally:  # a stream cut at the burst's end counts its events (a token each at this pace)
        share = usage["completion_tokens"] / max(1, len(times)) if usage else 1.0
        seen.extend((at, share) for at in times)


def loaded_on(url: str) -> bool:
    return any(m["id"] == MODEL and m["status"] == "loaded" for m in http_json("GET", url + "/models")[1]["models"])


async def burst(gateway: str, second: str | None, args) -> tuple[float, float, float | None]:
    """`args.streams` closed-loop streams for `args.seconds` through `gateway`: as fleet.burst, (tok/s over the
    burst, tok/s once the second node serves, seconds until then), the second node watched by its /models."""
    seen: list[tuple[float, float]] = []
    url = f"{gateway}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic()
        stop, full_at = start + args.seconds, None if second else start

        async def worker(i: int) -> None:
            # Cut at the end: tokens after it are not counted, and a real node's queue would take long to drain.
            with contextlib.suppress(TimeoutError):
                while time.monotonic() < stop:
                    await asyncio.wait_for(stream(session, url, i, seen), stop - time.monotonic())

        async def watch() -> None:
            nonlocal full_at
            next_line = start + 2
            while time.monotonic() < stop:
                if full_at is None and await asyncio.to_thread(loaded_on, second):
                    full_at = time.monotonic()
                    console.log(f"    the second replica is loaded, {full_at - start:.1f}s in")
                if time.monotonic() >= next_line:
                    done = sum(t for _, t in seen)
                    console.log(f"    {time.monotonic() - start:.0f}s: {done:.0f} tokens in finished streams")
                    next_line += 2
                await asyncio.sleep(0.1)

        await asyncio.gather(watch(), *(worker(i) for i in range(args.streams)))
    whole = sum(t for at, t in seen if at <= stop) / args.seconds
    steady = None
    if full_at is not None and stop - full_at > 1.5:
        settle = full_at + 1.0  # as fleet.burst: the first node's queue moves over as its streams finish
        steady = sum(t for at, t in seen if settle <= at <= stop) / (stop - settle)
    return whole, steady or 0.0, None if full_at is None else full_at - start


def load_seconds(gateway: str, node: str) -> float | None:
    """The seconds the gateway's load of the model on `node` took, from its event log."""
    events = http_json("GET", gateway + "/admin/status")[1].get("events", [])
    return next((e.get("seconds") for e in events if e.get("kind") == "load" and e.get("node") == node), None)


def real(args, root: Path) -> tuple[list[tuple], list[tuple], float | None]:
    """`args.rounds` of the two real runs, alternated (so a neighbour's load on the cores falls on both): (the
    1-node runs, the 2-node runs, the second node's load seconds, the mean)."""
    models = root / "models"
    make_tiny(models / f"{MODEL}.gguf", "gguf", "--seed", "1")
    with contextlib.ExitStack() as stack:
        neurons = {}
        for name in ("n1", "n2"):
            console.log(f"starting neuron {name} (slow fault: {args.delay_ms} ms a token)")
            neurons[name] = stack.enter_context(start_neuron(root, models, "--cpu-memory-mb", "4000", name=name))
            fault = {"model": MODEL, "fault": "slow", "delay_ms": args.delay_ms, "count": 1_000_000}
            assert http_json("POST", neurons[name].url + "/debug/faults", fault)[0] == 200
        assert http_json("POST", neurons["n1"].url + "/models/load", {"model": MODEL})[0] == 200
        results, loads = {1: [], 2: []}, []
        for r, n in itertools.product(range(args.rounds), (1, 2)):
            if loaded_on(neurons["n2"].url):  # each 2-node run starts from one replica, as fleet.burst's
                assert http_json("POST", neurons["n2"].url + "/models/unload", {"model": MODEL})[0] == 200
            where = root / f"gateway-{r}-{n}"
            where.mkdir()
            console.log(f"real, round {r + 1}: {n} node(s), max_replicas = {n}: {args.streams} streams for "
                        f"{args.seconds:g}s")
            urls = {name: p.url for name, p in list(neurons.items())[:n]}
            with start_gateway(where, urls, extra_toml=SCHEDULING,
                               models_toml=f'[[models]]\nid = "{MODEL}"\nmax_replicas = {n}\n') as gateway:
                results[n].append(asyncio.run(burst(gateway.url, neurons["n2"].url if n == 2 else None, args)))
                if n == 2 and (seconds := load_seconds(gateway.url, "n2")) is not None:
                    loads.append(seconds)
                served = {name: metric(gateway, f'cortex_requests_total{{endpoint="chat",model="{MODEL}",node="{name}",'
                                                'status="200"}') for name in urls}
                console.log("    streams finished by node: " + ", ".join(f"{k} {v:.0f}" for k, v in served.items()))
    return results[1], results[2], statistics.mean(loads) if loads else None


def mean_of(runs: list[tuple]) -> tuple[float, float, float | None]:
    """The runs' figures averaged (the time to the second replica: over the runs that had one)."""
    ready = [r[2] for r in runs if r[2] is not None]
    return (statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs),
            statistics.mean(ready) if ready else None)


def simulated(args, one_node: float, load_s: float) -> tuple[tuple, tuple]:
    """fleet.burst over 1 and 2 simulated nodes, each as fast as the real node was alone."""
    speed = Speed(slots=4, tok_rate=one_node / 4, load_s=load_s)
    out = []
    for n in (1, 2):
        console.log(f"simulated: {n} node(s), 4 slots x {speed.tok_rate:.1f} tok/s, load {load_s:.2f}s")
        out.append(asyncio.run(fleet.burst(n, n, args, speed)))
    return out[0], out[1]


def table(ones: list[tuple], twos: list[tuple], sim_runs: tuple, load_s: float, args) -> Table:
    """Real rates are the rounds' means and the real ratios theirs; each round's own ratio is shown beside it,
    as the spread a neighbour's load on the cores gives."""
    t = Table(title=f"(a) at the smallest size: real neurons (tiny GGUF, slow fault {args.delay_ms} ms a token) "
                    f"against the simulation, {args.streams} streams x {TOKENS} tokens for {args.seconds:g}s, "
                    f"{args.rounds} real rounds, load average {os.getloadavg()[0]:.2f} at the end, "
                    f"{time.strftime('%Y-%m-%d')}")
    for col in ("measure", "real", "simulated", "real / simulated"):
        t.add_column(col, justify="right")
    (r1, r2), (s1, s2) = (mean_of(ones), mean_of(twos)), sim_runs
    for name, a, b in (("1 node: tok/s over the burst", r1[0], s1[0]), ("2 nodes: tok/s over the burst", r2[0], s2[0]),
                       ("2 nodes: tok/s once both serve", r2[1], s2[1])):
        t.add_row(name, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}" if b else "")
    for name, k in (("ratio 2 nodes / 1, over the burst", 0), ("ratio 2 nodes / 1, once both serve", 1)):
        by_round = [two[k] / one[0] for one, two in zip(ones, twos, strict=True)]
        a, b = r2[k] / r1[0], s2[k] / s1[0]
        t.add_row(name, f"{a:.2f}x", f"{b:.2f}x", f"{a / b:.2f}")
        t.add_row("    real, by round", ", ".join(f"{r:.2f}x" for r in by_round), "", "")
    t.add_row("1 node alone, by round (tok/s)", ", ".join(f"{one[0]:.1f}" for one in ones), "", "")
    t.add_row("the second replica serves from", "never" if r2[2] is None else f"{r2[2]:.1f}s",
              "never" if s2[2] is None else f"{s2[2]:.1f}s", "")
    t.add_row("the second node's cold load", f"{load_s:.2f}s", f"{load_s:.2f}s (set to match)", "")
    t.add_row("a node's rate", f"<= {1000 / args.delay_ms:.0f} tok/s (the fault)", "the real node's alone", "")
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--delay-ms", type=int, default=20, help="the slow fault's delay per token on each neuron")
    ap.add_argument("--rounds", type=int, default=3, help="real 1-node and 2-node runs, alternated")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-real-") as root:
        ones, twos, load_s = real(args, Path(root))
    load_s = load_s if load_s is not None else Speed().load_s
    sim = simulated(args, mean_of(ones)[0], load_s)
    console.print(table(ones, twos, sim, load_s, args))
    console.log(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
