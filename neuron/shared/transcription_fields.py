"""The field policy of transcription requests (`POST /v1/audio/transcriptions`), and the bounds both servers say.

OpenAI's multipart form, as its SDKs send it (an array field as `name[]`). Apart from the schema
(`neuron.server.audio_schema`) so that the gateway's field tables (`cortex_gateway.field_tables`) and
docs/api.md read it without importing the neuron's server.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

MAX_AUDIO_S = 1800.0  # half an hour: a Whisper model decodes it in one job on the device, window after window
FORMATS = "WAV, FLAC, MP3 or OGG (Vorbis, Opus)"  # what libsndfile (the soundfile wheel's) decodes
RESPONSE_FORMATS = ("json", "text", "verbose_json")
# A transcript answered as text carries its usage here (a JSON object, as `usage` in the JSON answers), so the
# gateway meters every response_format alike.
USAGE_HEADER = "X-Cortex-Usage"

POLICIES = [FieldPolicy("Audio transcriptions", {
    "file": honoured(f"the audio, {FORMATS}, decoded without ffmpeg and resampled to the model's 16 kHz mono; "
                     f"at most {MAX_AUDIO_S:.0f} seconds, and the server's max_body_mb"),
    "model": honoured("a transcription model (`kind: transcription` in /v1/models): Whisper on torch"),
    "language": honoured("an ISO-639-1 code (`en`) the model knows; absent: the model detects it"),
    "prompt": honoured("text the model continues from (Whisper's previous-text prompt); at most half the "
                       "model's decoder positions less one, refused beyond, never cut"),
    "response_format": honoured("json (the default: `{text}`), text (the transcript alone), verbose_json (with "
                                "language, duration and timestamped segments); srt and vtt are refused"),
    "temperature": honoured("0 to 1; 0 (the default) decodes greedily, higher samples at that temperature (no "
                            "fallback schedule)"),
    "timestamp_granularities": honoured("`segment` (verbose_json's segments); `word` is refused: word timings "
                                        "need the model's alignment heads, not read here"),
    "stream": refused("transcripts are answered whole; send stream false or leave it out"),
    "chunking_strategy": refused("long audio is transcribed window by window by the model's own long-form "
                                 "decoding; there is no server-side voice detection"),
    "include": refused("log-probabilities of transcripts are not returned"),
    "known_speaker_names": refused("speaker diarization is not available: Whisper models do not tell speakers "
                                   "apart"),
    "known_speaker_references": refused("speaker diarization is not available: Whisper models do not tell speakers "
                                        "apart"),
    "keywords": refused("keyword boosting is not available; put the words in `prompt`"),
    "languages": refused("send one `language`, or none to let the model detect it"),
    "user": ignored("an end-user id for a provider's abuse monitoring; nothing here monitors users"),
})]
POLICY = POLICIES[0]
