"""The most seconds an uploaded audio file can hold, read from its first bytes without decoding it.

The gateway reserves a transcription's worst case against a key's budget before the node decodes anything,
and a transcription costs tokens by the second (Whisper's encoder reads 50 a second). WAV and FLAC say their
length in their headers; for anything else (MP3, OGG) the file's size at the lowest bitrate such a file is
made at bounds it. Pure Python and no audio library, so the gateway can import it.
"""

from __future__ import annotations

import struct

from neuron.shared.transcription_fields import MAX_AUDIO_S

MIN_BYTES_PER_S = 1000  # 8 kbit/s: below the lowest bitrate MP3 or Opus speech is encoded at
POSITIONS_PER_S = 50  # Whisper's encoder: 3000 mel frames of 10 ms, halved by its strided convolution
WINDOW_S = 30.0  # one pass of the encoder; a longer file is decoded window after window


def seconds_bound(data: bytes) -> float:
    """An upper bound on the audio's seconds, at most MAX_AUDIO_S (what a node accepts)."""
    exact = _wav_seconds(data) if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else \
        _flac_seconds(data) if data[:4] == b"fLaC" else None
    return min(MAX_AUDIO_S, exact if exact is not None else len(data) / MIN_BYTES_PER_S)


def _wav_seconds(data: bytes) -> float | None:
    """The data chunk's size over the fmt chunk's byte rate; None if either is missing or the rate is 0."""
    offset, byte_rate, size = 12, None, None
    while offset + 8 <= len(data) and (byte_rate is None or size is None):
        chunk, length = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt " and offset + 20 <= len(data):  # its byte rate: bytes 8 to 12 of the chunk
            byte_rate = struct.unpack_from("<I", data, offset + 16)[0]
        elif chunk == b"data":
            size = min(length, len(data) - offset - 8)  # a streamed WAV may say 0xFFFFFFFF
        offset += 8 + length + (length & 1)
    return size / byte_rate if byte_rate and size is not None else None


def _flac_seconds(data: bytes) -> float | None:
    """STREAMINFO's total samples over its sample rate; None where the encoder left the total out (0)."""
    if len(data) < 26:
        return None
    packed = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels (3), bits (5), total samples (36)
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    return total / rate if rate and total else None
