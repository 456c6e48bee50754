"""A key's transcriptions are metered (real processes, the official openai client): what the gateway bills is the
usage the neuron reports, the audio's encoder positions and prompt as prompt tokens and the tokens written as
completion tokens, whatever the response_format (a text answer's usage comes in the neuron's X-Cortex-Usage
header)."""

from __future__ import annotations

import io
import uuid

import numpy as np
import openai
import soundfile as sf

from tests.helpers import http_json, load_models, make_tiny, start_gateway, start_neuron

ADMIN = "admin-key-audio-01"


def test_each_response_format_is_billed_its_usage(tmp_path):
    models = tmp_path / "models"
    make_tiny(models / "whisper", "hf", "--kind", "transcribe")
    clip = io.BytesIO()
    sf.write(clip, 0.1 * np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32), 16000, format="WAV")
    with start_neuron(tmp_path, models, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ("whisper",))
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=f'[auth]\nadmin_keys = ["{ADMIN}"]') as gateway:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            name = f"a-{uuid.uuid4().hex[:8]}"
            status, body = http_json("POST", gateway.url + "/admin/keys", {"name": name}, headers=admin)
            assert status == 201, body
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=body["key"], max_retries=0)
            answer = client.audio.transcriptions.create(model="whisper", file=("a.wav", clip.getvalue()),
                                                        language="en")
            text = client.audio.transcriptions.create(model="whisper", file=("a.wav", clip.getvalue()),
                                                      language="en", response_format="text")
            assert text == answer.text + "\n"
            usage = answer.usage
            assert usage.seconds == 2.0 and usage.prompt_tokens == 100  # 50 encoder positions a second
            status, billed = http_json("GET", gateway.url + f"/admin/usage?key={name}", headers=admin)
            assert status == 200, billed
            rows = billed["usage"]
            assert sum(r["requests"] for r in rows) == 2
            assert sum(r["total_tokens"] for r in rows) == 2 * usage.total_tokens  # the text answer's too


def test_a_long_file_is_refused_before_the_node_reads_it_when_its_worst_case_is_past_the_budget(tmp_path):
    """The reservation is the file's worst case from its header (neuron.shared.audio_bound): 60 s of WAV cannot
    fit a 2,500-token budget (3,000 encoder positions alone), 2 s can, and the refused one never reaches the node."""
    models = tmp_path / "models"
    make_tiny(models / "whisper", "hf", "--kind", "transcribe")
    files = {}
    for seconds in (2, 60):
        clip = io.BytesIO()
        sf.write(clip, np.zeros(16000 * seconds, dtype=np.float32), 16000, format="WAV")
        files[seconds] = clip.getvalue()
    with start_neuron(tmp_path, models, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ("whisper",))
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=f'[auth]\nadmin_keys = ["{ADMIN}"]') as gateway:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            name = f"b-{uuid.uuid4().hex[:8]}"
            status, body = http_json("POST", gateway.url + "/admin/keys",
                                     {"name": name, "budget_tokens": 2500, "budget_window": "1d"}, headers=admin)
            assert status == 201, body
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=body["key"], max_retries=0)
            try:
                client.audio.transcriptions.create(model="whisper", file=("long.wav", files[60]), language="en")
                raise AssertionError("60 s of audio fitted a budget smaller than its encoder positions")
            except openai.APIStatusError as err:
                assert err.status_code == 429 and "budget" in err.message, err.message
            answer = client.audio.transcriptions.create(model="whisper", file=("a.wav", files[2]), language="en")
            assert answer.usage.seconds == 2.0
            rows = http_json("GET", gateway.url + f"/admin/usage?key={name}", headers=admin)[1]["usage"]
            assert sum(r["requests"] for r in rows) == 1  # the refused file was never transcribed, nor billed
            assert neuron.log().count("POST /v1/audio/transcriptions 200") == 1
