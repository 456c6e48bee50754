"""Seconds per request and per second of audio for `cortex tiny-model --kind transcribe`, through a real
gateway and neuron on the CPU, with the official openai client (issue 26).

    python benchmarks/transcription.py [--rounds 5] [--lengths 1,30,120]

Each length is a WAV of noise at 16 kHz (no resampling) and at 44.1 kHz stereo (mixed down and resampled);
the first request of each is a warm-up. The tiny model's weights are random: the time is the path's
(upload, decode, features, one generate of at most 16 tokens a window), not a real Whisper's decoding.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import make_tiny, one_node_fleet  # noqa: E402


def clip(seconds: int, rate: int, channels: int) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    samples = 0.1 * np.random.default_rng(seconds).standard_normal((seconds * rate, channels))
    sf.write(out, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def timed(client, data: bytes, rounds: int) -> float:
    """The median seconds of `rounds` transcriptions, after one warm-up."""
    times = []
    for i in range(rounds + 1):
        started = time.perf_counter()
        client.audio.transcriptions.create(model="whisper", file=("clip.wav", data), language="en")
        if i:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    import openai

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lengths", default="1,30,120")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tiny(root / "models" / "whisper", "hf", "--kind", "transcribe")
        with one_node_fleet(root, root / "models", "--cpu-memory-mb", "4000", load=("whisper",)) as (gateway, _, _):
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=600)
            print("| audio | file | s per request (median) | s per s of audio |")
            print("|---|---|---|---|")
            for seconds in (int(s) for s in args.lengths.split(",")):
                for rate, channels in ((16000, 1), (44100, 2)):
                    took = timed(client, clip(seconds, rate, channels), args.rounds)
                    print(f"| {seconds} s | WAV {rate / 1000:g} kHz {'mono' if channels == 1 else 'stereo'} | "
                          f"{took:.3f} | {took / seconds:.4f} |")


if __name__ == "__main__":
    main()
