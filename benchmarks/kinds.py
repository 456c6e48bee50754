"""Issue 26's kinds served against the raw library in this process: image generation (diffusers), rerank
(a torch cross-encoder and its GGUF on llama.cpp) and vision chat (a torch Llava, and a GGUF with its projector
on llama.cpp: benchmarks/kinds_vision_gguf.py), each the same work done

  (a) raw: the library called here, as the neuron's backend calls it (the diffusers pipeline from the tiny
      folder with the same size, steps and seeds; AutoModelForSequenceClassification on the same pairs in
      the backend's chunks and batches; llama.cpp rank pooling on the same framed pairs, 32 a decode;
      AutoModelForImageTextToText.generate, greedy, with the same image and number of new tokens;
      llama-cpp-python's MTMDChatHandler chat on the GGUF pair, greedy, the same image and tokens), and
  (b) served: a real `cortex neuron` behind a real `cortex serve` (the official openai client for images
      and chat, HTTP for /v1/rerank),

and prints per row the medians of `--rounds` rounds after one warm-up, and served/raw: the serving overhead
(the gateway, the neuron's queue and tokeniser threads, PNG encoding and base64, JSON, loopback HTTP).

    python benchmarks/kinds.py [--rounds 5] [--json]

The tiny models' weights are random: the times are the paths', not a real model's. Both sides share this
machine's cores, one at a time (the neuron is idle while the raw side runs).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.kinds_vision_gguf import vision_gguf_rows  # noqa: E402
from neuron.engine.backends.llamacpp_embed import MAX_SEQUENCES  # noqa: E402
from neuron.engine.backends.torch_rerank import BATCH  # noqa: E402
from neuron.engine.embeddings import CHUNK  # noqa: E402
from tests.helpers import http_json, make_tiny, one_node_fleet  # noqa: E402

PROMPT = "a sunny city"
SEED = 7
QUERY = "which city is sunny today"
VISION_TOKENS = 16


def progress(line: str) -> None:
    """Long work shows progress: on stderr, so that --json's stdout stays one document."""
    print(f"[kinds {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def median_s(work, rounds: int) -> float:
    """The median seconds of `rounds` calls of `work`, after one warm-up call."""
    work()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def documents(count: int) -> list[str]:
    """`count` short documents of varied lengths (so the backend's sort by length has work to do)."""
    words = "rain sun cloud wind paris london rome snow storm bright grey city weather today warm".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 12)) for i in range(count)]


def png(color: str = "red") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, "PNG")
    return out.getvalue()


# -- images -------------------------------------------------------------------------------------------------
def image_raw(folder: Path):
    """A function drawing (steps, n) as the diffusers backend does: float32 on the CPU, image i from seed + i."""
    import diffusers
    import torch

    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def draw(steps: int, n: int) -> None:
        generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)]
        with torch.inference_mode():
            pipe(prompt=PROMPT, height=64, width=64, num_images_per_prompt=n, generator=generators,
                 num_inference_steps=steps, output_type="pil")
    return draw


def image_served(client):
    def draw(steps: int, n: int) -> None:
        answer = client.images.generate(model="img", prompt=PROMPT, size="64x64", n=n, response_format="b64_json",
                                        extra_body={"steps": steps, "seed": SEED})
        assert len(answer.data) == n and all(base64.b64decode(item.b64_json) for item in answer.data)
    return draw


def image_rows(folder: Path, client, rounds: int) -> list[dict]:
    raw, served, rows = image_raw(folder), image_served(client), []
    for steps, n in ((2, 1), (20, 1), (2, 4)):
        progress(f"image 64x64, {steps} steps, n={n}")
        a = median_s(lambda steps=steps, n=n: raw(steps, n), rounds)
        b = median_s(lambda steps=steps, n=n: served(steps, n), rounds)
        rows.append(row(f"image 64x64, {steps} steps, n={n}", a, b, f"{b / n:.3f} s/image (raw {a / n:.3f})"))
    return rows


# -- rerank -------------------------------------------------------------------------------------------------
def rerank_torch_raw(folder: Path):
    """Score pairs as the torch backend does: chunks of CHUNK pairs, each sorted by length, BATCH a pass."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()

    def score(docs: list[str]) -> None:
        lengths = [len(tokenizer(QUERY, d)["input_ids"]) for d in docs]  # the backend tokenises too
        for start in range(0, len(docs), CHUNK):
            order = sorted(range(start, min(start + CHUNK, len(docs))), key=lambda i: lengths[i])
            for b in range(0, len(order), BATCH):
                rows = order[b:b + BATCH]
                enc = tokenizer([QUERY] * len(rows), [docs[i] for i in rows], padding=True, return_tensors="pt")
                with torch.inference_mode():
                    torch.sigmoid(model(**enc).logits[:, 0].float())
    return score


def rerank_gguf_raw(path: Path):
    """Score pairs as the llama.cpp backend does: rank pooling, [CLS] query [SEP] document [SEP], up to
    MAX_SEQUENCES sequences (and one context of tokens) a decode, the head's logit through a sigmoid."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK, n_ctx=512,
                          n_batch=512, n_ubatch=512, verbose=False)
    bos, eos, ctx = llm.token_bos(), llm.token_eos(), llm.ctx

    def decode(group: list[list[int]]) -> np.ndarray:
        llm._ctx.kv_cache_clear()
        llm._batch.reset()
        for seq, ids in enumerate(group):
            llm._batch.add_sequence(ids, seq, True)
        llm._ctx.decode(llm._batch)
        logits = np.array([llama_cpp.llama_get_embeddings_seq(ctx, s)[0] for s in range(len(group))])
        return 1.0 / (1.0 + np.exp(-logits))

    def score(docs: list[str]) -> None:
        query = llm.tokenize(QUERY.encode(), add_bos=False, special=False)
        group, tokens = [], 0
        for doc in docs:
            ids = [bos, *query, eos, *llm.tokenize(doc.encode(), add_bos=False, special=False), eos]
            if group and (tokens + len(ids) > 512 or len(group) == MAX_SEQUENCES):
                decode(group)
                group, tokens = [], 0
            group.append(ids)
            tokens += len(ids)
        decode(group)
    return score, llm


def rerank_served(url: str, model: str):
    def score(docs: list[str]) -> None:
        status, body = http_json("POST", url + "/v1/rerank", {"model": model, "query": QUERY, "documents": docs})
        assert status == 200 and len(body["results"]) == len(docs), body
    return score


def rerank_rows(models: Path, url: str, rounds: int) -> list[dict]:
    gguf_score, llm = rerank_gguf_raw(models / "rerank-gguf.gguf")
    rows = []
    try:
        for label, raw, model in (("torch", rerank_torch_raw(models / "rerank"), "rerank"),
                                  ("GGUF", gguf_score, "rerank-gguf")):
            served = rerank_served(url, model)
            for count in (64, 256):
                progress(f"rerank {label}, {count} documents")
                docs = documents(count)
                a = median_s(lambda docs=docs, raw=raw: raw(docs), rounds)
                b = median_s(lambda docs=docs, served=served: served(docs), rounds)
                rows.append(row(f"rerank {label}, {count} documents", a, b,
                                f"{count / b:,.0f} pairs/s (raw {count / a:,.0f})"))
    finally:
        llm.close()
    return rows


# -- vision chat --------------------------------------------------------------------------------------------
def vision_raw(folder: Path):
    """generate as the vision backend runs it: greedy, exactly VISION_TOKENS new tokens (no end token)."""
    import torch
    import transformers
    from PIL import Image

    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(folder)).eval()
    picture = Image.open(io.BytesIO(png())).convert("RGB")

    def chat(with_image: bool) -> None:
        content = [{"type": "text", "text": "what is in the picture"}] + ([{"type": "image"}] if with_image else [])
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = processor(text=text, images=[picture] if with_image else None, return_tensors="pt",
                           add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=VISION_TOKENS, min_new_tokens=VISION_TOKENS,
                                 do_sample=False, pad_token_id=processor.tokenizer.pad_token_id or 0)
        assert out.shape[1] - inputs["input_ids"].shape[1] == VISION_TOKENS
    return chat, end_ids(model, processor.tokenizer)


def end_ids(model, tokenizer) -> set[int]:
    """The ids that would end an answer early: banned on the served side, as min_new_tokens bans them raw."""
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends] if ends is not None else [])
    return ends | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def vision_served(client, ends: set[int]):
    url = "data:image/png;base64," + base64.b64encode(png()).decode()

    def chat(with_image: bool) -> None:
        content = [{"type": "text", "text": "what is in the picture"}]
        content += [{"type": "image_url", "image_url": {"url": url}}] if with_image else []
        answer = client.chat.completions.create(model="vision", messages=[{"role": "user", "content": content}],
                                                max_tokens=VISION_TOKENS, temperature=0,
                                                logit_bias={str(i): -100 for i in ends})
        assert answer.usage.completion_tokens == VISION_TOKENS, answer.usage
    return chat


def vision_rows(folder: Path, client, rounds: int) -> list[dict]:
    raw, ends = vision_raw(folder)
    served, rows = vision_served(client, ends), []
    for with_image in (True, False):
        label = f"vision chat, {'an image' if with_image else 'no image'}, {VISION_TOKENS} tokens"
        progress(label)
        a = median_s(lambda w=with_image: raw(w), rounds)
        b = median_s(lambda w=with_image: served(w), rounds)
        rows.append(row(label, a, b, f"{VISION_TOKENS / b:.0f} tokens/s (raw {VISION_TOKENS / a:.0f})"))
    return rows


# -- the run ------------------------------------------------------------------------------------------------
def row(work: str, raw: float, served: float, rate: str) -> dict:
    return {"work": work, "raw_s": round(raw, 4), "served_s": round(served, 4), "ratio": round(served / raw, 2),
            "rate": rate}


def make_models(models: Path) -> None:
    for out, fmt, kind in (("img", "hf", "image"), ("rerank", "hf", "rerank"), ("rerank-gguf.gguf", "gguf", "rerank"),
                           ("vision", "hf", "vision"), ("vision-gguf", "gguf", "vision")):
        progress(f"cortex tiny-model {out} --kind {kind} --format {fmt}")
        make_tiny(models / out, fmt, "--kind", kind)


def measure(root: Path, rounds: int) -> list[dict]:
    import openai

    models = root / "models"
    make_models(models)
    progress("starting cortex neuron and cortex serve, loading the five models")
    with one_node_fleet(root, models, "--cpu-memory-mb", "6000",
                        load=("img", "rerank", "rerank-gguf", "vision",
                              {"model": "vision-gguf", "backend": "llama.cpp"})) as (gateway, _, _):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        return (image_rows(models / "img", client, rounds) + rerank_rows(models, gateway.url, rounds)
                + vision_rows(models / "vision", client, rounds)
                + vision_gguf_rows(models, client, png(), VISION_TOKENS, rounds, median_s, row, progress))


def table(rows: list[dict]) -> str:
    lines = ["| work | raw s (median) | served s (median) | served/raw | served rate |", "|---|---|---|---|---|"]
    lines += [f"| {r['work']} | {r['raw_s']:.4f} | {r['served_s']:.4f} | {r['ratio']:.2f} | {r['rate']} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds a row, after one warm-up")
    parser.add_argument("--json", action="store_true", help="the rows as one JSON document, not a table")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), args.rounds)  # one_node_fleet stops both processes however this ends
    progress(f"done in {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()
