"""Transcription's pure parts: the multipart reader both servers use, the request schema and its field policy
against the SDK's request types, the audio decoder's refusals and the resampler, the catalog's kind and estimate."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from openai.types.audio import transcription_create_params

from neuron.engine.audio import decode, resample
from neuron.server.audio_schema import parse_transcription
from neuron.server.catalog import ModelRef, estimate_mb, hf_kind
from neuron.shared.errors import ApiError
from neuron.shared.multipart import parse_form, replaced
from neuron.shared.protocol import ModelKind
from neuron.shared.transcription_fields import POLICY
from tests.test_field_policy import sdk_fields

BOUNDARY = "b0undary"
CONTENT_TYPE = f'multipart/form-data; boundary="{BOUNDARY}"'


def form(fields: list[tuple[str, str]], file: bytes | None = b"RIFF....") -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields]
    if file is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a b.wav"\r\n'
                     "Content-Type: audio/wav\r\n\r\n".encode() + file + b"\r\n")
    return b"preamble\r\n" + b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def test_the_reader_finds_fields_files_and_arrays_in_place():
    body = form([("model", "whisper"), ("timestamp_granularities[]", "segment"), ("timestamp_granularities[]", "x")],
                file=b"\r\n--not-the-boundary\r\n\x00\xff")
    parsed = parse_form(body, CONTENT_TYPE)
    assert parsed.text("model") == "whisper" and parsed.text("absent") is None
    assert parsed.texts() == {"model": "whisper", "timestamp_granularities": ["segment", "x"]}
    part = parsed.part("file")
    assert part.filename == "a b.wav" and part.content_type == "audio/wav"
    assert parsed.value(part) == b"\r\n--not-the-boundary\r\n\x00\xff"


def test_an_alias_replaces_the_model_field_and_nothing_else():
    body = form([("model", "speech"), ("language", "en")], file=bytes(range(256)))
    out = replaced(parse_form(body, CONTENT_TYPE), "model", "whisper-large-v3")
    assert out == body.replace(b"\r\n\r\nspeech\r\n", b"\r\n\r\nwhisper-large-v3\r\n")
    assert parse_form(out, CONTENT_TYPE).value(parse_form(out, CONTENT_TYPE).part("file")) == bytes(range(256))


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (b"{}", "application/json", "expected multipart/form-data"),
    (b"", None, "expected multipart/form-data"),
    (b"--x\r\n", "multipart/form-data", "without a boundary"),
    (form([("model", "m")])[:-10], CONTENT_TYPE, "closing boundary"),
    (f'--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nv\r\n--{BOUNDARY}--'.encode(), CONTENT_TYPE,
     "without a name"),
])
def test_a_malformed_body_is_a_400_saying_what(body, content_type, says):
    with pytest.raises(ApiError) as exc:
        parse_form(body, content_type)
    assert exc.value.status == 400 and says in exc.value.message


def test_the_schema_reads_openais_fields():
    req = parse_transcription(form([("model", "w"), ("language", "EN"), ("prompt", "Hi."), ("temperature", "0.4"),
                                    ("response_format", "verbose_json"), ("stream", "false")]), CONTENT_TYPE)
    assert (req.model, req.language, req.prompt, req.temperature, req.response_format) == ("w", "en", "Hi.", 0.4,
                                                                                           "verbose_json")
    assert req.audio == b"RIFF...."
    nameless = form([("model", "w")], file=None) + b""  # a file part without a file name is still the file
    nameless = nameless.replace(f"--{BOUNDARY}--".encode(), f'--{BOUNDARY}\r\nContent-Disposition: form-data; '
                                f'name="file"\r\n\r\n\xff\xfe\r\n--{BOUNDARY}--'.encode("latin-1"))
    assert parse_transcription(nameless, CONTENT_TYPE).audio == b"\xff\xfe"
    assert parse_transcription(form([("model", "w")]), CONTENT_TYPE).response_format == "json"


@pytest.mark.parametrize(("fields", "param"), [
    ([("model", "w"), ("stream", "true")], "stream"),
    ([("model", "w"), ("stream", "false"), ("stream", "false")], "stream"),
    ([("model", "w"), ("response_format", "vtt")], "response_format"),
    ([("model", "w"), ("response_format", "yaml")], "response_format"),
    ([("model", "w"), ("temperature", "hot")], "temperature"),
    ([("model", "w"), ("language", "english!")], "language"),
    ([("model", "w"), ("include[]", "logprobs")], "include"),
    ([("model", "w"), ("model", "v")], "model"),
    ([("model", "")], "model"),
])
def test_schema_refusals_name_the_field(fields, param):
    with pytest.raises(ApiError) as exc:
        parse_transcription(form(fields), CONTENT_TYPE)
    assert exc.value.status == 400 and exc.value.param == param


def test_every_sdk_field_has_a_rule():
    fields = sdk_fields(transcription_create_params.TranscriptionCreateParamsNonStreaming,
                        transcription_create_params.TranscriptionCreateParamsStreaming)
    assert len(fields) >= 5
    assert not sorted(fields - set(POLICY.rules))


def test_the_resampler_is_band_limited():
    for source in (8000, 22050, 44100, 48000):
        t = np.arange(source) / source
        out = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), source, 16000)
        assert len(out) == 16000
        expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        assert np.abs(out[100:-100] - expected[100:-100]).max() < 1e-3
    t = np.arange(44100) / 44100  # 12 kHz is above the new Nyquist frequency: filtered out, not folded to 4 kHz
    folded = resample(np.sin(2 * np.pi * 12000 * t).astype(np.float32), 44100, 16000)
    assert np.sqrt(np.mean(folded[100:-100] ** 2)) < 0.01


def test_decode_mixes_to_mono_and_refuses_what_it_cannot_read():
    import soundfile as sf

    buf = io.BytesIO()
    stereo = np.stack([np.full(8000, 0.5), np.full(8000, -0.1)], axis=1).astype(np.float32)
    sf.write(buf, stereo, 8000, format="WAV", subtype="FLOAT")
    samples, seconds = decode(buf.getvalue(), 16000, 30)
    assert seconds == 1.0 and len(samples) == 16000 and abs(float(samples[8000]) - 0.2) < 1e-3
    with pytest.raises(ApiError) as exc:
        decode(b"ID3 but not really an mp3", 16000, 30)
    assert exc.value.param == "file" and exc.value.code == "invalid_audio" and "MP3" in exc.value.message
    with pytest.raises(ApiError) as exc:
        decode(buf.getvalue(), 16000, 0.5)
    assert exc.value.code == "audio_too_long" and "over the limit of 0.5 seconds" in exc.value.message


def test_the_catalog_knows_whisper_and_sizes_its_request(tmp_path):
    config = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper", "d_model": 1280,
              "decoder_layers": 32, "encoder_attention_heads": 20, "max_source_positions": 1500,
              "max_target_positions": 448, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert hf_kind(tmp_path) == ModelKind.TRANSCRIPTION
    ref = ModelRef("w", "hf", str(tmp_path), 3000.0, kind=ModelKind.TRANSCRIPTION)
    gpu = estimate_mb(ref, None, on_cpu=False, parallel=4)
    assert 3000 + 300 < gpu < 3000 + 600  # caches over 1948 positions and one layer's scores, counted once


def test_without_soundfile_the_error_names_what_to_install(monkeypatch):
    """As on a node installed without the audio extra: the import fails (sys.modules' None makes it fail), and the
    Whisper backend's load, which calls this first, is refused with that message."""
    import sys

    from neuron.engine.audio import import_soundfile
    from neuron.engine.backends.base import BackendUnavailable

    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(BackendUnavailable) as exc:
        import_soundfile()
    assert "pip install 'cortex-fleet[audio]'" in str(exc.value)
