"""(d) of the fleet benchmark: interleaved demand for three models on a node that holds two (issue 23).

One simulated node (benchmarks/sim_node.py) with room for two of three equal models (2,500 MiB, 1,000 MiB
each; the 507 of a load that does not fit and the 409 of a busy unload are the neuron's own answers), a
cold load taking `--load-s` of simulated time, and the gateway in this process. Requests arrive open-loop
on a fixed seeded schedule (exponential gaps at `--swap-rate` a second, each for one of the three models
at random), so a slow answer does not slow the arrivals as a closed loop would, and the loaded models are
busy most of the time. Measured in the same run against the same schedule:

- today: `min_residency_s = 0` (a cold load waits for a busy model to idle, then evicts it at once);
- issue 23: `min_residency_s = --residency` (waiting loads oldest first, grouped by model; a model loaded
  for waiting requests stays that long; a busy victim past it takes no new requests until swapped out).

Loads are the node's own count (a load another request joined counts once); a request's wait is its time to
first token less the node's own first-token time for its prompt (`base_s` plus the prompt at
`prefill_rate`), so it is the time spent waiting for a load, a slot or a swap; 503s are counted by their
code, whether they come as a status or as the error event of a stream already open for keep-alives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from sim_node import SimNode, Speed, serving

from cortex_gateway.app import create_app
from cortex_gateway.config import GatewayConfig, NeuronSpec, Scheduling

MODELS = ("m1", "m2", "m3")
CATALOG = {m: 1000.0 for m in MODELS}
NODE_MB = 2500.0  # two of the three fit, never three
TOKENS = 32  # an answer: 0.64 s of one slot at 50 tok/s


@dataclass
class Outcome:
    """One request: its model, its status (200, the error's, or 0 for another error event), code, wait (s)."""

    model: str
    status: int = 200
    code: str = ""
    wait: float = 0.0
    message: str = ""


@dataclass
class Run:
    """What one configuration did with the schedule."""

    residency: float
    outcomes: list[Outcome] = field(default_factory=list)
    loads: int = 0
    refused_unloads: int = 0
    seconds: float = 0.0

    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def failed(self, status: int) -> int:
        return sum(o.status == status for o in self.outcomes)

    def other_errors(self) -> str:
        """The errors that are not 503s, by code ("0" when none)."""
        codes = Counter(o.code or str(o.status) for o in self.outcomes if o.status not in (200, 503))
        return ", ".join(f"{n} {code}" for code, n in sorted(codes.items())) or "0"

    def loads_per_100(self) -> float:
        return 100 * self.loads / len(self.outcomes)

    def wait(self, q: float) -> float:
        waits = sorted(o.wait for o in self.served())
        return waits[min(len(waits) - 1, int(q * len(waits)))] if waits else 0.0

    def longest(self) -> float:
        return max((o.wait for o in self.served()), default=0.0)

    def median(self) -> float:
        return statistics.median(o.wait for o in self.served()) if self.served() else 0.0


def schedule(n: int, rate: float, seed: int = 23) -> list[tuple[float, str]]:
    """`n` (seconds from the start, model) arrivals: a Poisson stream at `rate`, models drawn uniformly."""
    rng, at, out = random.Random(seed), 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        out.append((at, rng.choice(MODELS)))
    return out


@contextlib.asynccontextmanager
async def gateway(node: SimNode, scheduling: Scheduling):
    """The node and a gateway over it (no model profiles: the node's catalog is the gateway's)."""
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serving(node.app()))
        state = stack.enter_context(tempfile.TemporaryDirectory())
        config = GatewayConfig(neurons=[NeuronSpec(node.name, url)], poll_interval_s=0.5, state_dir=Path(state),
                               keepalive_s=1.0, scheduling=scheduling)
        yield f"{await stack.enter_async_context(serving(create_app(config)))}/v1/chat/completions"


async def ask(session: aiohttp.ClientSession, url: str, model: str, i: int, speed: Speed) -> Outcome:
    """One streamed chat; its outcome. An error, as a status or as a stream's error event, is recorded."""
    messages = [{"role": "user", "content": f"request {i} for {model}"}]
    body = orjson.dumps({"model": model, "messages": messages, "max_tokens": TOKENS, "stream": True})
    started = time.monotonic()
    own = speed.base_s + (len(messages[0]["content"]) // 4 + 4) / speed.prefill_rate  # the node's first token
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            err = (await resp.json()).get("error") or {}
            return Outcome(model, resp.status, str(err.get("code") or ""), message=str(err.get("message")))
        first = None
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            data = orjson.loads(line[6:])
            if err := data.get("error"):  # an event carries no status: the code says which it was
                return Outcome(model, 503 if err.get("code") == "no_capacity" else 0, str(err.get("code")),
                               message=str(err.get("message")))
            if first is None and (data.get("choices") or [{}])[0].get("delta", {}).get("content"):
                first = time.monotonic() - started
    return Outcome(model, wait=max(0.0, (first or 0.0) - own))


async def interleaved(residency: float, arrivals: list[tuple[float, str]], args) -> Run:
    """The schedule against one node holding m1 and m2 at the start, `min_residency_s = residency`."""
    speed = Speed(load_s=args.load_s)
    node = SimNode("node0", CATALOG, {"m1", "m2"}, speed, total_mb=NODE_MB)
    scheduling = Scheduling(prefix_map_entries=0, max_wait_s=args.max_wait, min_residency_s=residency)
    run = Run(residency)
    async with gateway(node, scheduling) as url, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic()

        async def arrive(i: int, at: float, model: str) -> Outcome:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            return await ask(session, url, model, i, speed)

        run.outcomes = list(await asyncio.gather(*(arrive(i, at, m) for i, (at, m) in enumerate(arrivals))))
        run.seconds = time.monotonic() - start
    run.loads, run.refused_unloads = len(node.served.loads), node.served.refused_unloads
    return run


async def scenario_d(args, log) -> tuple[Run, Run]:
    """Today's behaviour and issue 23's over the same seeded schedule."""
    arrivals = schedule(args.swap_requests, args.swap_rate)
    runs = []
    for residency in (0.0, args.residency):
        log(f"(d) 3 models on a node that holds 2: {args.swap_requests} requests at {args.swap_rate:g}/s, "
            f"load {args.load_s:g}s, max_wait_s = {args.max_wait:g}, min_residency_s = {residency:g}")
        runs.append(run := await interleaved(residency, arrivals, args))
        for message, n in Counter(o.message for o in run.outcomes if o.status != 200).most_common(3):
            log(f"    {n} x {message}")
    return runs[0], runs[1]


def rows(today: Run, new: Run, args) -> list[tuple[str, ...]]:
    """The table's rows for (d): measure, today, issue 23, ratio, goal, met."""
    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}" if a else ""

    met = "yes" if new.loads_per_100() <= today.loads_per_100() / 4 else "NO"
    no_503 = "yes" if not new.failed(503) else "NO"
    in_time = "yes" if new.longest() <= args.max_wait else "NO"
    return [
        (f"(d) 3 models, a node for 2, {len(new.outcomes)} req at {args.swap_rate:g}/s: loads per 100 req",
         f"{today.loads_per_100():.1f}", f"{new.loads_per_100():.1f}",
         ratio(today.loads_per_100(), new.loads_per_100()), "<= 0.25", met),
        ("    503s", str(today.failed(503)), str(new.failed(503)), "", "0", no_503),
        ("    other errors", today.other_errors(), new.other_errors(), "", "", ""),
        ("    wait p50 / p99 (s)", f"{today.median():.2f} / {today.wait(0.99):.2f}",
         f"{new.median():.2f} / {new.wait(0.99):.2f}", ratio(today.wait(0.99), new.wait(0.99)), "", ""),
        (f"    longest wait (s), max_wait_s {args.max_wait:g}", f"{today.longest():.2f}", f"{new.longest():.2f}",
         "", f"<= {args.max_wait:g}", in_time),
        ("    busy unloads refused (409) / seconds", f"{today.refused_unloads} / {today.seconds:.0f}",
         f"{new.refused_unloads} / {new.seconds:.0f}", "", "", ""),
    ]


def add_arguments(ap) -> None:
    ap.add_argument("--swap-requests", type=int, default=200)
    ap.add_argument("--swap-rate", type=float, default=6.0, help="arrivals a second, all three models")
    ap.add_argument("--load-s", type=float, default=1.0, help="a simulated cold load's seconds")
    ap.add_argument("--residency", type=float, default=5.0, help="min_residency_s of issue 23's run")
    ap.add_argument("--max-wait", type=float, default=15.0, help="max_wait_s of both runs")
