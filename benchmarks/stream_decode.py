"""Streamed decode rate through a real neuron vs the raw backend, on the same model and prompt.

Goal (issue 2): streamed rate >= 0.95 x raw. Also shows llama-cpp-python's own
`create_completion(stream=True)`, whose per-token re-detokenisation we avoid.

    python benchmarks/stream_decode.py [--tokens 512] [--runs 3]

Decode rate = (tokens - 1) / (time of last token - time of first token), so
prompt processing is excluded on both sides. The raw baseline drives
`Llama.generate` in this process with no detokenisation at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import CORTEX, http_json, start_neuron  # noqa: E402

console = Console()
PROMPT = [{"role": "user", "content": "Tell me a long story about the fleet."}]


def make_model(root: Path, name: str, fmt: str, dim: int, layers: int) -> None:
    out = root / (f"{name}.gguf" if fmt == "gguf" else name)
    subprocess.run(CORTEX + ["tiny-model", str(out), "--format", fmt, "--dim", str(dim), "--layers",
                             str(layers), "--vocab", "2000"], check=True, capture_output=True)


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def raw_llama(path: Path, n: int, runs: int) -> tuple[float, float]:
    from llama_cpp import Llama

    from neuron.chat_template import render_chat

    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)
    prompt = render_chat(llm.metadata["tokenizer.chat_template"], PROMPT)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    eos = llm.token_eos()
    raw, lib_stream = [], []
    for _ in range(runs):
        times = []
        for tok in llm.generate(tokens, temp=0, logits_processor=_ban(eos)):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        raw.append(rate(times))
        times = [time.perf_counter() for _ in llm.create_completion(
            prompt, max_tokens=n, temperature=0, stream=True, logit_bias={eos: -100.0})]
        lib_stream.append(rate(times))
    llm.close()
    return statistics.median(raw), statistics.median(lib_stream)


def _ban(eos):
    from llama_cpp import LogitsProcessorList

    def ban(_ids, scores):
        scores[eos] = -float("inf")
        return scores

    return LogitsProcessorList([ban])


def raw_torch(path: Path, n: int, runs: int) -> float:
    from neuron.backends.base import BackendSpec
    from neuron.backends.torch_hf import TorchBackend
    from neuron.chat_template import render_chat
    from neuron.openai_schema import SamplingParams

    b = TorchBackend(BackendSpec(path, "hf", ["cpu"]))
    tokens = b.tokenize(render_chat(b.chat_template, PROMPT))
    params = SamplingParams(temperature=0, logit_bias={t: -100.0 for t in b._end_ids})
    rates = []
    for _ in range(runs):
        times = []
        for _tok in b.generate_tokens(tokens, params):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        rates.append(rate(times))
    return statistics.median(rates)


def streamed(url: str, model: str, n: int, runs: int, eos_ids: list[int]) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": n, "temperature": 0, "stream": True,
            "logit_bias": {str(t): -100 for t in eos_ids}}
    rates = []
    for _ in range(runs):
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
        times = []
        with urllib.request.urlopen(req) as resp:
            for line in resp:
                if line.startswith(b'data: {"id"') and b'"content":"' in line and b'"role"' not in line:
                    times.append(time.perf_counter())
        rates.append(rate(times))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    table = Table(title=f"Streamed decode vs raw backend ({args.tokens} tokens, median of {args.runs})")
    for col in ("model", "raw tok/s", "neuron SSE tok/s", "ratio", "llama-cpp-python stream=True tok/s"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        shapes = [("small-gguf", "gguf", 64, 2), ("mid-gguf", "gguf", 512, 8), ("mid-hf", "hf", 512, 8)]
        with console.status("making models with cortex tiny-model"):
            for name, fmt, dim, layers in shapes:
                make_model(models, name, fmt, dim, layers)
        neuron = start_neuron(root, models, env={"CORTEX_FAULT_INJECTION": "0"})
        try:
            for name, fmt, dim, layers in shapes:
                console.log(f"{name}: dim {dim}, {layers} layers; loading")
                status, info = http_json("POST", neuron.url + "/models/load", {"model": name})
                assert status == 200, info
                if fmt == "gguf":
                    raw, lib = raw_llama(models / f"{name}.gguf", args.tokens, args.runs)
                    eos = [2]
                else:
                    raw, lib = raw_torch(models / name, args.tokens, args.runs), None
                    eos = [0, 2]
                console.log(f"{name}: raw {raw:.0f} tok/s; streaming through the neuron")
                ours = streamed(neuron.url, name, args.tokens, args.runs, eos)
                table.add_row(name, f"{raw:.0f}", f"{ours:.0f}", f"{ours / raw:.3f}",
                              "-" if lib is None else f"{lib:.0f}")
                http_json("POST", neuron.url + "/models/unload", {"model": name})
        finally:
            neuron.terminate()
    console.print(table)


if __name__ == "__main__":
    main()
