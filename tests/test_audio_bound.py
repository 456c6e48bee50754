"""How long an upload can be, from its first bytes (neuron.shared.audio_bound), and the transcription's worst
case a budget reserves from it (cortex_gateway.budgets): exact for WAV and FLAC, a bound by size otherwise."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from cortex_gateway import budgets
from neuron.shared.audio_bound import MIN_BYTES_PER_S, seconds_bound
from neuron.shared.transcription_fields import MAX_AUDIO_S


def encoded(seconds: float, rate: int = 16000, channels: int = 1, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    sf.write(out, np.zeros((int(seconds * rate), channels), dtype=np.float32), rate, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("seconds, rate, channels, fmt", [
    (3, 16000, 1, "WAV"), (2, 44100, 2, "WAV"), (0.5, 8000, 1, "WAV"), (3, 16000, 1, "FLAC"), (7, 48000, 2, "FLAC"),
])
def test_wav_and_flac_say_their_length(seconds, rate, channels, fmt):
    assert seconds_bound(encoded(seconds, rate, channels, fmt)) == pytest.approx(seconds)


def test_other_files_are_bounded_by_their_size_and_nothing_past_what_a_node_accepts():
    mp3 = encoded(3, fmt="MP3")
    assert 3 <= seconds_bound(mp3) == len(mp3) / MIN_BYTES_PER_S  # a bound, never less than the truth
    assert seconds_bound(b"\x00" * 10_000_000) == MAX_AUDIO_S
    assert seconds_bound(encoded(1)[:30]) == 30 / MIN_BYTES_PER_S  # a WAV cut before its data chunk


def test_a_transcriptions_worst_case_grows_with_its_seconds():
    assert budgets.request_worst_case("transcriptions", {"audio_s": 2.0}, 448) == 100 + 2 * 448
    assert budgets.request_worst_case("transcriptions", {"audio_s": 60.0}, 448) == 3000 + 3 * 448
    assert budgets.request_worst_case("transcriptions", {}, 448) is None  # no file read: no bound


@given(head=st.sampled_from([b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"fLaC", b""]),
       rest=st.binary(max_size=96))
def test_any_upload_gets_a_bound_never_an_error(head, rest):
    """A hostile or cut header is the client's: the gateway must answer it, so the bound never raises."""
    assert 0 <= seconds_bound(head + rest) <= MAX_AUDIO_S
