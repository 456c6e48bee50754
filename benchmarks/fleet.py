"""The fleet: replicas, prefix-affine routing and the prefix map's memory, against today's behaviour (issue 23).

Simulated nodes (benchmarks/sim_node.py: the real node protocol, a fixed token rate per slot, a modelled
prefix cache) and the gateway (`create_app` under an AppRunner) run in this one process, a gateway per
scenario configuration, so the figures are the gateway's placement and not this machine's cores. Today's
behaviour, measured in the same run, is `max_replicas = 1` and `prefix_map_entries = 0` (least busy).

- (a) a hot model's aggregate tok/s with 1, 2 and 4 nodes under a burst of concurrent streams
  (goal >= 0.9 x N of one node), with `max_replicas = N` and `scale_out_queue = 1`;
- (b) cached-prompt share and TTFT p50 of multi-turn sessions over 2 replicas (goal: cached share >= 0.8,
  TTFT p50 <= 0.5 x least-busy routing's), the model pre-loaded on both;
- (c) the prefix map's memory after 1,000,000 distinct prefixes, with the default bound (bounded);
- (d) loads per 100 requests and p99 wait for interleaved demand for 3 models on a node that holds 2 (goal
  <= 1/4 the loads, no 503, no wait beyond max_wait_s): benchmarks/fleet_swaps.py.

benchmarks/fleet_real.py runs (a) at 1 and 2 nodes with real neurons beside this simulation at the same size.

    python benchmarks/fleet.py [--seconds 6] [--streams 32] [--sessions 16] [--turns 4] [--swap-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import fleet_swaps  # noqa: E402
from sim_node import SimNode, Speed, serving  # noqa: E402

from cortex_gateway.app import create_app  # noqa: E402
from cortex_gateway.config import GatewayConfig, ModelProfile, NeuronSpec, Scheduling  # noqa: E402
from cortex_gateway.prefix_map import PrefixMap  # noqa: E402

console = Console(width=150)
MODEL = "hot"
CATALOG = {MODEL: 1000.0}


@contextlib.asynccontextmanager
async def fleet(nodes: list[SimNode], scheduling: Scheduling, profile: ModelProfile):
    """The nodes and a gateway over them; yields the gateway's chat URL."""
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serving(n.app())) for n in nodes]
        state = stack.enter_context(tempfile.TemporaryDirectory())
        config = GatewayConfig(neurons=[NeuronSpec(n.name, u) for n, u in zip(nodes, urls, strict=True)],
                               models={MODEL: profile}, poll_interval_s=0.5, state_dir=Path(state),
                               scheduling=scheduling)
        gateway = await stack.enter_async_context(serving(create_app(config)))
        yield f"{gateway}/v1/chat/completions"


async def chat_events(session: aiohttp.ClientSession, url: str, body: dict):
    """The data events of one streamed chat through `url`, parsed; an answer other than 200 fails the run."""
    async with session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        async for line in resp.content:
            if line.startswith(b"data: {"):
                yield orjson.loads(line[6:])


def delta_text(event: dict) -> str | None:
    return (event.get("choices") or [{}])[0].get("delta", {}).get("content")


async def stream(session: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int,
                 seen: list[tuple[float, int]] | None = None) -> tuple[float, str, dict]:
    """One streamed chat: (seconds to its first token, the answer, its usage). `seen` gets (time, tokens) per
    event."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    started, first, parts, usage = time.monotonic(), None, [], {}
    async for data in chat_events(session, url, body):
        usage = data.get("usage") or usage
        if content := delta_text(data):
            now = time.monotonic()
            first = first if first is not None else now - started
            parts.append(content)
            if seen is not None:
                seen.append((now, len(content) // 4))
    return first or 0.0, "".join(parts), usage


# -- (a) a hot model over 1, 2 and 4 nodes --------------------------------------------------------------
async def burst(n_nodes: int, replicas: int, args, speed: Speed | None = None) -> tuple[float, float, float | None]:
    """A burst of `args.streams` closed-loop streams for `args.seconds`: (tok/s over the burst, tok/s once
    every replica is serving, seconds until then or None when never). `speed`: fleet_real.py's, to match."""
    nodes = [SimNode(f"node{i}", CATALOG, {MODEL} if i == 0 else set(), speed or Speed()) for i in range(n_nodes)]
    scheduling = Scheduling(prefix_map_entries=0, scale_out_queue=1)
    seen: list[tuple[float, int]] = []
    async with fleet(nodes, scheduling, ModelProfile(MODEL, max_replicas=replicas)) as url, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic()
        stop, full_at = start + args.seconds, None

        async def worker(i: int) -> None:
            while time.monotonic() < stop:
                await stream(session, url, [{"role": "user", "content": f"stream {i}: go on"}], 32, seen)

        async def watch() -> None:
            nonlocal full_at
            while full_at is None and time.monotonic() < stop:
                if sum(MODEL in n.loaded for n in nodes) >= replicas:
                    full_at = time.monotonic()
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(worker(i) for i in range(args.streams)))
    whole = sum(t for at, t in seen if at <= stop) / args.seconds
    steady = None
    if full_at is not None and stop - full_at > 1.5:
        settle = full_at + 1.0  # the streams queued on the first node move over as they finish
        steady = sum(t for at, t in seen if settle <= at <= stop) / (stop - settle)
    return whole, steady or 0.0, None if full_at is None else full_at - start


async def scenario_a(args) -> list[tuple]:
    rows, one = [], None
    for n in (1, 2, 4):
        console.log(f"(a) {n} node(s), today (max_replicas = 1): {args.streams} streams for {args.seconds:g}s")
        today = await burst(n, 1, args)
        one = one or today[0]
        new = today
        if n > 1:
            console.log(f"(a) {n} nodes, max_replicas = {n}, scale_out_queue = 1")
            new = await burst(n, n, args)
        rows.append((n, today, new, one))
    return rows


# -- (b) multi-turn sessions over 2 replicas ---------------------------------------------------------------
async def sessions(entries: int, args) -> tuple[float, float, float]:
    """`args.sessions` concurrent sessions of `args.turns` turns over 2 nodes holding the model: (cached share
    of the prompt tokens of turns after the first, TTFT p50 of those turns in ms, of all turns in ms)."""
    nodes = [SimNode(f"node{i}", CATALOG, {MODEL}, Speed()) for i in range(2)]
    profile = ModelProfile(MODEL, max_replicas=2, min_replicas=2)
    later, ttfts = [], []  # (ttft, prompt tokens, cached tokens) of turns after the first; every turn's ttft
    async with fleet(nodes, Scheduling(prefix_map_entries=entries), profile) as url, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def conversation(s: int) -> None:
            # Users start and answer at their own pace (seeded): in lockstep, least-busy routing alternates
            # the nodes in the same order every turn and keeps each session on one node by accident.
            pace = random.Random(s)
            await asyncio.sleep(pace.uniform(0, 1))
            # Each session's own long system prompt (its document, its tools): ~1500 tokens.
            messages = [{"role": "system", "content": f"session {s} context. " + "lorem ipsum dolor " * 330}]
            for turn in range(args.turns):
                messages.append({"role": "user", "content": f"question {turn} of session {s}: " + "why " * 40})
                ttft, answer, usage = await stream(session, url, messages, 32)
                ttfts.append(ttft)
                messages.append({"role": "assistant", "content": answer})
                await asyncio.sleep(pace.uniform(0, 1))  # the user reads and types
                if turn:
                    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    later.append((ttft, usage["prompt_tokens"], cached))

        await asyncio.gather(*(conversation(s) for s in range(args.sessions)))
    share = sum(c for _, _, c in later) / sum(p for _, p, _ in later)
    p50_later = statistics.median(t for t, _, _ in later) * 1000
    return share, p50_later, statistics.median(ttfts) * 1000


# -- (c) the prefix map's memory -----------------------------------------------------------------------------
def prefix_map_memory(n: int) -> tuple[int, int, float, float]:
    """(the bound, entries held, MB held, MB at the peak) after `n` distinct single-key records."""
    bound = Scheduling().prefix_map_entries
    names = [f"node{i}" for i in range(4)]
    tracemalloc.start()
    pmap = PrefixMap(bound)
    for key in range(n):
        pmap.record((key * 0x9E3779B97F4A7C15 & (2**64 - 1),), names[key & 3])
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return bound, len(pmap), held / 1e6, peak / 1e6


def table(rows_a: list[tuple], b: dict[str, tuple], c: tuple, d: tuple, args) -> Table:
    t = Table(title=f"The fleet: simulated nodes (4 slots x 50 tok/s, prefill 2000 tok/s), {time.strftime('%Y-%m-%d')}")
    for col in ("measure", "today", "issue 23", "ratio", "goal", "met"):
        t.add_column(col, justify="right")
    for n, today, new, one in rows_a:
        whole, steady, full = new
        goal = 0.9 * n * one
        t.add_row(f"(a) {n} node(s), {args.streams} streams: tok/s over {args.seconds:g}s", f"{today[0]:.0f}",
                  f"{whole:.0f}", f"{whole / one:.2f}x one node", f">= {0.9 * n:.1f}x", _met(whole >= goal))
        if n > 1:
            ready = "never" if full is None else f"{full:.1f}s"
            t.add_row(f"    once all {n} replicas serve (from {ready})", "", f"{steady:.0f}",
                      f"{steady / one:.2f}x one node", f">= {0.9 * n:.1f}x", _met(steady >= goal))
    (share0, p50_0, all0), (share1, p50_1, all1) = b["today"], b["affine"]
    t.add_row(f"(b) 2 replicas, {args.sessions} sessions x {args.turns} turns: cached prompt share (turns 2+)",
              f"{share0:.2f}", f"{share1:.2f}", "", ">= 0.8", _met(share1 >= 0.8))
    t.add_row("    TTFT p50, turns 2+ (ms)", f"{p50_0:.0f}", f"{p50_1:.0f}", f"{p50_1 / p50_0:.2f}", "<= 0.5",
              _met(p50_1 <= 0.5 * p50_0))
    t.add_row("    TTFT p50, all turns (ms)", f"{all0:.0f}", f"{all1:.0f}", f"{all1 / all0:.2f}", "", "")
    bound, held, mb, peak = c
    t.add_row(f"(c) prefix map after {args.prefixes:,} distinct prefixes (bound {bound:,})", "none",
              f"{held:,} entries, {mb:.1f} MB (peak {peak:.1f})", f"{mb * 1e6 / held:.0f} B/entry",
              "bounded", _met(held <= bound))
    for row in fleet_swaps.rows(*d, args):
        t.add_row(*row)
    return t


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


async def run(args) -> None:
    rows_a = await scenario_a(args)
    b = {}
    for name, entries in (("today", 0), ("affine", Scheduling().prefix_map_entries)):
        console.log(f"(b) 2 replicas, {args.sessions} sessions x {args.turns} turns, prefix_map_entries = {entries}")
        b[name] = await sessions(entries, args)
    console.log(f"(c) prefix map: {args.prefixes:,} distinct prefixes under tracemalloc")
    c = prefix_map_memory(args.prefixes)
    d = await fleet_swaps.scenario_d(args, console.log)
    console.print(table(rows_a, b, c, d, args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--prefixes", type=int, default=1_000_000)
    fleet_swaps.add_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
