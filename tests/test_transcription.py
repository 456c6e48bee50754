"""Transcription through the gateway (real processes): a real `cortex neuron` serving `cortex tiny-model --kind
transcribe`, a real `cortex serve` in front, the official `openai` client's `audio.transcriptions.create`.

The tiny Whisper's weights are random, so its text is garbage; what is checked is what is deterministic: the
text of a WAV, a FLAC and an MP3 (written here by soundfile) is the one transformers itself gives for the same
samples, decoding greedily with timestamps as the backend does; each response_format's shape; each refusal a
400 naming its field, before any load where the kind is wrong; a cold load on demand; the audio seconds metered.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import openai
import pytest

from tests.helpers import http_json, make_tiny, metric, one_node_fleet

RATE = 16000


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory, models_dir):
    """The tiny Whisper as "whisper", linked again as "whisper-cold" (never loaded) and "whisper-lazy" (cold-loaded
    by a request), copied as "whisper-nots" without timestamp tokens in its generation config (as some fine-tunes
    ship); the tiny chat models as "tiny-gguf" and "chat-cold"."""
    import json
    import shutil

    models = tmp_path_factory.mktemp("audio-models")
    make_tiny(models / "whisper", "hf", "--kind", "transcribe")
    shutil.copytree(models / "whisper", models / "whisper-nots")
    generation = models / "whisper-nots" / "generation_config.json"
    generation.write_text(json.dumps({k: v for k, v in json.loads(generation.read_text()).items()
                                      if k != "no_timestamps_token_id"}))
    for name in ("whisper-cold", "whisper-lazy"):
        (models / name).symlink_to(models / "whisper")
    (models / "tiny-gguf.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    (models / "chat-cold.gguf").symlink_to(models_dir / "tiny-short.gguf")
    return models


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, audio_models):
    with one_node_fleet(tmp_path_factory.mktemp("audio"), audio_models, "--cpu-memory-mb", "4000",
                        load=("whisper", "tiny-gguf"), models_toml='[aliases]\nspeech = "whisper"\n') as (gw, n, _):
        yield gw, n


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One second of sound as WAV, FLAC and MP3, each as written by soundfile."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(RATE)).astype(np.float32)
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for ext in ("wav", "flac", "mp3"):
        sf.write(folder / f"clip.{ext}", samples, RATE)
        out[ext] = folder / f"clip.{ext}"
    return out


def direct_text(folder, path, language: str = "en", prompt: str | None = None) -> str:
    """What transformers itself transcribes from the file's samples (libsndfile's decoding, 16 kHz mono as
    written): greedy, with timestamps, as the backend decodes; past 30 seconds, long-form (the whole file's
    features, unpadded, with their mask), as transformers' documentation does it."""
    import soundfile as sf
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE
    long = {"truncation": False, "padding": "longest"} if len(samples) > 30 * RATE else {}
    features = processor.feature_extractor(samples.mean(axis=1), sampling_rate=RATE, return_tensors="pt",
                                           return_attention_mask=True, **long)
    extra = {"prompt_ids": processor.get_prompt_ids(prompt, return_tensors="pt")} if prompt else {}
    out = model.generate(features["input_features"], attention_mask=features["attention_mask"], task="transcribe",
                         language=language, return_timestamps=True, return_segments=True, **extra)
    return processor.tokenizer.decode(out["sequences"][0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3"])
def test_each_format_transcribes_to_what_transformers_gives(fleet, client, clips, audio_models, ext):
    with open(clips[ext], "rb") as f:
        answer = client.audio.transcriptions.create(model="whisper", file=f, language="en")
    expected = direct_text(audio_models / "whisper", clips[ext])
    assert expected and answer.text == expected
    assert answer.usage.type == "duration" and answer.usage.seconds == pytest.approx(1.0, abs=0.1)


def test_long_audio_and_a_prompt_decode_as_transformers_does(fleet, client, audio_models, tmp_path):
    """45 seconds go through transformers' long-form decoding, window after window; a prompt is Whisper's
    previous text."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    path = tmp_path / "long.flac"
    sf.write(path, (0.2 * rng.standard_normal(45 * RATE)).astype(np.float32), RATE)
    with open(path, "rb") as f:
        long = client.audio.transcriptions.create(model="whisper", file=f, language="en",
                                                  response_format="verbose_json")
    assert long.text == direct_text(audio_models / "whisper", path) and long.duration == pytest.approx(45.0)
    assert all(0 <= s.start <= s.end <= 45.0 for s in long.segments)
    with open(path, "rb") as f:
        prompted = client.audio.transcriptions.create(model="whisper", file=f, language="en", prompt="Paris, London.")
    assert prompted.text == direct_text(audio_models / "whisper", path, prompt="Paris, London.")
    assert prompted.usage.prompt_tokens > long.usage.prompt_tokens  # the prompt's tokens count


def test_a_model_without_timestamps_answers_one_segment_of_one_window(fleet, client, clips, tmp_path):
    import soundfile as sf

    with open(clips["wav"], "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-nots", file=f, language="en",
                                                     response_format="verbose_json")
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [(0.0, verbose.duration, verbose.text)]
    only = verbose.segments[0]
    assert only.seek == 0 and only.avg_logprob < 0 and 0.0 <= only.no_speech_prob <= 1.0
    path = tmp_path / "31s.wav"
    sf.write(path, np.zeros(31 * RATE, np.float32), RATE)
    with open(path, "rb") as f, pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model="whisper-nots", file=f)
    assert exc.value.body["param"] == "file" and "over the limit of 30 seconds" in exc.value.body["message"]


def direct_windows(folder, path) -> list[tuple[int, float, float | None]]:
    """Each 30-second window's (seek, avg_logprob, no_speech_prob) as openai-whisper defines them, computed from
    transformers' own outputs rather than the backend's running sums: the seek as `monitor_progress` reports
    it, the chosen tokens' log-probabilities from the scores `output_scores` keeps (greedy: no warper after
    the timestamp rules), and, for the first window, the no-speech probability from a forward of its features
    and prompt of its own (None after it: the window's features are transformers' to cut)."""
    import soundfile as sf
    import torch
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
    samples, _ = sf.read(str(path), dtype="float32")
    long = {"truncation": False, "padding": "longest"} if len(samples) > 30 * RATE else {}
    features = processor.feature_extractor(samples, sampling_rate=RATE, return_tensors="pt",
                                           return_attention_mask=True, **long)
    seeks, eos = [], model.generation_config.eos_token_id
    out = model.generate(features["input_features"], attention_mask=features["attention_mask"], task="transcribe",
                         language="en", return_timestamps=True, return_segments=True, return_dict_in_generate=True,
                         output_scores=True, monitor_progress=lambda p: seeks.append(int(p[0, 0])))
    results = []
    for segment in out["segments"][0]:
        if not results or results[-1] is not segment["result"]:
            results.append(segment["result"])
    assert len(results) == len(seeks)  # every window wrote a segment here: windows and results pair in order
    vocab = processor.tokenizer.get_vocab()
    no_speech = next(vocab[t] for t in ("<|nospeech|>", "<|nocaptions|>") if t in vocab)
    windows = []
    for i, (seek, result) in enumerate(zip(seeks, results, strict=True)):
        steps = torch.stack([s.reshape(-1) for s in result["scores"]]).float()
        tokens = result["sequences"][-len(steps):]
        total = float(torch.log_softmax(steps, -1).gather(-1, tokens[:, None]).sum())
        count = len(tokens) - int(int(tokens[-1]) == eos)
        prob = None
        if i == 0:
            prompt = result["sequences"][:-len(steps)][None]
            with torch.no_grad():
                logits = model(input_features=features["input_features"][..., :3000], decoder_input_ids=prompt).logits
            prob = float(logits[0, 0].softmax(-1)[no_speech])
        windows.append((seek, total / (count + 1), prob))
    return windows


def test_verbose_json_segments_carry_their_windows_seek_avg_logprob_and_no_speech_prob(fleet, client, audio_models,
                                                                                      tmp_path):
    """What openai-whisper puts on each segment (the AI SDK's schema requires all three), per window, as
    transformers' outputs give them; over 45 seconds, two windows."""
    import soundfile as sf

    path = tmp_path / "long.wav"
    sf.write(path, (0.2 * np.random.default_rng(1).standard_normal(45 * RATE)).astype(np.float32), RATE)
    with open(path, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper", file=f, language="en",
                                                     response_format="verbose_json")
    expected = direct_windows(audio_models / "whisper", path)
    assert len(expected) >= 2 and expected[0][0] == 0 and expected[1][0] > 0
    served = []
    for s in verbose.segments:  # a window's segments share its figures: one entry a window, in order
        if not served or served[-1][0] != s.seek:
            served.append((s.seek, s.avg_logprob, s.no_speech_prob))
    assert [seek for seek, _, _ in served] == [seek for seek, _, _ in expected]
    for (_, avg, prob), (_, want_avg, want_prob) in zip(served, expected, strict=True):
        assert avg == pytest.approx(want_avg, abs=1e-4) and 0.0 <= prob <= 1.0
        assert want_prob is None or prob == pytest.approx(want_prob, abs=1e-5)


def test_a_temperature_samples(fleet, client, clips):
    with open(clips["wav"], "rb") as f:
        answer = client.audio.transcriptions.create(model="whisper", file=f, language="en", temperature=0.9)
    assert isinstance(answer.text, str) and answer.usage.completion_tokens > 0


def test_response_formats_text_and_verbose_json(fleet, client, clips):
    with open(clips["wav"], "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper", file=f, language="en", response_format="json")
    with open(clips["wav"], "rb") as f:
        text = client.audio.transcriptions.create(model="whisper", file=f, language="en", response_format="text")
    assert text == plain.text + "\n"  # as OpenAI answers it
    with open(clips["wav"], "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper", file=f, response_format="verbose_json",
                                                     timestamp_granularities=["segment"])
    assert verbose.task == "transcribe" and verbose.duration == pytest.approx(1.0)
    assert isinstance(verbose.language, str) and verbose.language  # detected: a name, as OpenAI gives it
    assert verbose.segments and all(0 <= s.start <= s.end <= verbose.duration for s in verbose.segments)
    assert [s.id for s in verbose.segments] == list(range(len(verbose.segments)))
    assert "".join(s.text for s in verbose.segments).strip() == verbose.text


def test_an_alias_is_spliced_into_the_form_and_the_audio_seconds_are_counted_and_logged(fleet, client, clips):
    gateway, _ = fleet
    with open(clips["flac"], "rb") as f:
        by_alias = client.audio.transcriptions.create(model="speech", file=f, language="en")
    with open(clips["flac"], "rb") as f:
        assert by_alias.text == client.audio.transcriptions.create(model="whisper", file=f, language="en").text
    assert metric(gateway, 'cortex_audio_seconds_total{model="whisper",node="n1"}') >= 2.0
    assert metric(gateway, 'cortex_requests_total{endpoint="transcriptions",model="whisper",node="n1",'
                           'status="200"}') >= 2
    lines = [line for line in gateway.log_path.read_text(errors="replace").splitlines()
             if "POST /v1/audio/transcriptions 200" in line]
    assert any("model=whisper" in line and "prompt_tokens=50" in line for line in lines), lines
    assert "audio_s=1.0" in fleet[1].log_path.read_text(errors="replace")  # the neuron's line


def test_a_transcription_cold_loads_its_model(fleet, client, clips):
    _, neuron = fleet
    with open(clips["wav"], "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-lazy", file=f, language="en").text
    loaded = {m["id"]: m for m in http_json("GET", neuron.url + "/models")[1]["models"]}
    assert loaded["whisper-lazy"]["kind"] == "transcription" and loaded["whisper-lazy"]["backend"] == "torch"


def post_form(url: str, fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[int, dict]:
    """A hand-written multipart body, for what the SDK will not send (no file at all)."""
    import json

    boundary = "cortex-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + file[1] + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def long_silence(seconds: float) -> bytes:
    """A FLAC of silence, small however long (FLAC compresses it to almost nothing)."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 8000), np.int16), 8000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(("fields", "file", "param", "says"), [
    ({"model": "whisper"}, None, "file", "file: required"),
    ({"model": "whisper"}, ("notes.txt", b"these are not the samples you are looking for"), "file",
     "WAV, FLAC, MP3"),
    ({"model": "whisper"}, ("long.flac", long_silence(1801)), "file", "over the limit of 1800 seconds"),
    ({"model": "whisper", "response_format": "srt"}, ("a.wav", b"x"), "response_format", "verbose_json"),
    ({"model": "whisper", "temperature": "2"}, ("a.wav", b"x"), "temperature", "from 0 to 1"),
    ({"model": "whisper", "timestamp_granularities[]": "word"}, ("a.wav", b"x"), "timestamp_granularities", "word"),
    ({"model": "whisper", "language": "xx"}, None, "language", "not one this model knows"),
    ({"model": "whisper", "diarize": "true"}, ("a.wav", b"x"), "diarize", "Unrecognized"),
    ({}, ("a.wav", b"x"), "model", "model: required"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_a_400_naming_the_field(fleet, clips, fields, file, param, says):
    gateway, _ = fleet
    if param == "language":
        file = ("clip.wav", clips["wav"].read_bytes())
    status, answer = post_form(gateway.url + "/v1/audio/transcriptions", fields, file)
    assert status == 400, answer
    assert answer["error"]["param"] == param and says in answer["error"]["message"], answer


@pytest.mark.parametrize("model", ["tiny-gguf", "chat-cold"])
def test_a_chat_model_asked_to_transcribe_is_a_400_before_any_load(fleet, client, clips, model):
    _, neuron = fleet
    with open(clips["wav"], "rb") as f, pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model=model, file=f)
    error = exc.value.body
    assert error["param"] == "model" and f"model '{model}' is a chat model" in error["message"]
    assert "pick a transcription model" in error["message"]
    assert "chat-cold" not in {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


@pytest.mark.parametrize("model", ["whisper", "whisper-cold"])
def test_a_transcription_model_asked_to_chat_is_a_400_before_any_load(fleet, client, model):
    _, neuron = fleet
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert f"model '{model}' is a transcription model: it serves /v1/audio/transcriptions only" in exc.value.message
    assert "whisper-cold" not in {m["id"] for m in http_json("GET", neuron.url + "/models")[1]["models"]}


def test_a_body_over_the_gateways_limit_is_a_413(fleet):
    gateway, _ = fleet
    status, answer = post_form(gateway.url + "/v1/audio/transcriptions", {"model": "whisper"},
                               ("big.wav", b"\0" * (33 * 2**20)))  # [gateway] max_body_mb is 32 by default
    assert status == 413, answer
    assert answer["error"]["code"] == "request_too_large"
