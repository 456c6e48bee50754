"""Transcription models are placed like the others (real processes): cold-loaded by a request, evicted by the
gateway for another model's cold load when the node's budget holds one alone, whatever the kinds."""

from __future__ import annotations

import io

import numpy as np
import openai
import soundfile as sf

from tests.helpers import http_json, make_tiny, metric, one_node_fleet

# A tiny Whisper is about 71 MiB by estimate (its encoder's attention over a window counts), a tiny chat GGUF
# about 33: a 90 MiB budget holds one Whisper, not two, nor a Whisper and the chat model.
BUDGET = "90"


def loaded(neuron) -> set[str]:
    return {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def test_transcription_models_are_cold_loaded_and_evicted_like_the_others(tmp_path, models_dir):
    models = tmp_path / "models"
    make_tiny(models / "w1", "hf", "--kind", "transcribe")
    make_tiny(models / "w2", "hf", "--kind", "transcribe", "--seed", "1")
    (models / "chat.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    clip = io.BytesIO()
    sf.write(clip, np.zeros(8000, np.float32), 16000, format="WAV")
    with one_node_fleet(tmp_path, models, "--cpu-memory-mb", BUDGET) as (gateway, neuron, _):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        client.audio.transcriptions.create(model="w1", file=("a.wav", clip.getvalue()), language="en")
        assert loaded(neuron) == {"w1"}
        client.audio.transcriptions.create(model="w2", file=("a.wav", clip.getvalue()), language="en")
        assert loaded(neuron) == {"w2"}
        assert metric(gateway, 'cortex_evictions_total{model="w1",node="n1",strategy="lru"}') == 1
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert loaded(neuron) == {"chat"}
        assert metric(gateway, 'cortex_evictions_total{model="w2",node="n1",strategy="lru"}') == 1
