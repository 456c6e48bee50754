"""An uploaded audio file as a model hears it: decoded, bounded, mixed to mono, resampled (16 kHz for Whisper).

Decoding is libsndfile's, through the `soundfile` wheel (which bundles libsndfile 1.1 or later: WAV, FLAC,
MP3, OGG Vorbis and Opus), so no ffmpeg is needed. The length is read from the header before anything is
decoded, so a file over the bound costs nothing. Resampling is a Hann-windowed sinc (6 zero crossings,
rolloff 0.99: torchaudio's default `resample`, so the features match what a Whisper user computes with
torchaudio) run as one strided convolution in torch, which the Whisper backend has anyway: band-limited,
so content above the new Nyquist frequency (8 kHz at 16 kHz) does not fold back into the speech band as
linear interpolation would let it. Runs on the engine's tokenizer threads, never on the event loop.
"""

from __future__ import annotations

import io
import math

import numpy as np

from neuron.engine.backends.base import BackendUnavailable
from neuron.shared.errors import bad_request
from neuron.shared.transcription_fields import FORMATS

INSTALL = "transcription needs the soundfile package to decode audio: pip install 'cortex-fleet[audio]'"
FILTER_WIDTH = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # the filter's cutoff, as a fraction of the lower Nyquist frequency


def import_soundfile():
    """soundfile, or the error naming what to install (raised at load, so a node without it says so then)."""
    try:
        import soundfile
    except (ImportError, OSError) as exc:  # OSError: the package without a libsndfile it can open
        raise BackendUnavailable(INSTALL) from exc
    return soundfile


def decode(data: bytes, rate: int, max_seconds: float) -> tuple[np.ndarray, float]:
    """The file as float32 mono samples at `rate` and its duration in seconds; a 400 naming the file for one
    that is not audio libsndfile reads, or longer than `max_seconds`."""
    sf = import_soundfile()
    try:
        info = sf.info(io.BytesIO(data))
        if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
            raise _too_long(info.frames / info.samplerate, max_seconds)
        samples, source_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as exc:
        raise bad_request(f"file: could not be decoded as audio ({_reason(exc)}); send {FORMATS}", param="file",
                          code="invalid_audio") from None
    duration = len(samples) / source_rate
    if duration > max_seconds:  # a header that under-stated the length (some MP3s have none)
        raise _too_long(duration, max_seconds)
    if not len(samples):
        raise bad_request("file: the audio holds no samples", param="file", code="invalid_audio")
    return resample(samples.mean(axis=1), source_rate, rate), duration


def _too_long(seconds: float, limit: float):
    return bad_request(f"file: {seconds:.1f} seconds of audio, over the limit of {limit:g} seconds; split the "
                       "recording", param="file", code="audio_too_long")


def _reason(exc: BaseException) -> str:
    """libsndfile's own words ("Format not recognised"), without the in-memory file's repr before them."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text.rsplit(": ", 1)[-1]


def resample(samples: np.ndarray, source: int, target: int) -> np.ndarray:
    """`samples` (float32, one channel) from `source` Hz to `target` Hz, band-limited."""
    if source == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import torch

    gcd = math.gcd(source, target)
    up, down = target // gcd, source // gcd
    kernel, width = _sinc_kernel(torch, down, up)
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, None]
    wave = torch.nn.functional.pad(wave, (width, width + down))
    with torch.inference_mode():
        out = torch.nn.functional.conv1d(wave, kernel, stride=down)  # (1, up, frames): `up` phases per step
    length = math.ceil(up * len(samples) / down)
    return out[0].transpose(0, 1).reshape(-1)[:length].numpy()


def _sinc_kernel(torch, down: int, up: int):
    """`up` filters (one per output phase) over `2 * width + down` input samples, each a windowed sinc."""
    cutoff = min(down, up) * ROLLOFF
    width = math.ceil(FILTER_WIDTH * down / cutoff)
    taps = torch.arange(-width, width + down, dtype=torch.float64)[None, None] / down
    t = (torch.arange(0, -up, -1, dtype=torch.float64)[:, None, None] / up + taps) * cutoff
    t = t.clamp(-FILTER_WIDTH, FILTER_WIDTH)
    window = torch.cos(t * math.pi / FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * cutoff / down).to(torch.float32), width
