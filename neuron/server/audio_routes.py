"""The neuron's transcription route: `POST /v1/audio/transcriptions`, OpenAI's multipart request and answers.

Admitted like embeddings and rerank: one slot of the model's admission per request, in its fair queue; the
audio decoded and its features computed on the tokenizer threads, `generate` one job on the device thread.
Answers: json (`{text, usage}`), text (the transcript, its usage in the X-Cortex-Usage header so the gateway
meters it too), verbose_json (task, language, duration, text, segments, usage).
"""

from __future__ import annotations

import zlib

import orjson
from aiohttp import web

from neuron.engine.transcribe import Transcribed, transcribe
from neuron.server.audio_schema import TranscriptionRequest, parse_transcription
from neuron.server.caller import caller_of
from neuron.server.state import ACCESS, ENGINE, METRICS, REGISTRY
from neuron.shared.errors import bad_request
from neuron.shared.http import json_response
from neuron.shared.transcription_fields import USAGE_HEADER

PATH = "/v1/audio/transcriptions"


async def transcriptions(request: web.Request) -> web.Response:
    app = request.app
    req = parse_transcription(await request.read(), request.headers.get("Content-Type"))
    caller = caller_of(request)  # whose turn it is in the model's queue
    entry = app[REGISTRY].require_loaded(req.model, PATH)
    if entry.on_engine:
        raise bad_request(f"model {entry.id!r} runs on an external engine; transcription is served on the torch "
                          "backend: load it with backend torch", param="model", code="unsupported_backend")
    async with entry.admission.slot(caller=caller):
        done = await transcribe(entry.backend, app[REGISTRY].worker_for(entry), app[ENGINE].tokenizer_pool, req)
    usage = done.usage()
    app[METRICS].tokens.labels(entry.id, "prompt").inc(usage["prompt_tokens"])
    app[METRICS].tokens.labels(entry.id, "completion").inc(usage["completion_tokens"])
    request[ACCESS] = {"model": entry.id, "prompt_tokens": usage["prompt_tokens"],
                       "completion_tokens": usage["completion_tokens"], "audio_s": usage["seconds"],
                       "priority": caller.priority_name, "tenant": caller.tenant or None}
    return answer(req, done, entry.backend.language_name(done.transcript.language))


def answer(req: TranscriptionRequest, done: Transcribed, language: str | None) -> web.Response:
    usage = done.usage()
    text = done.transcript.text
    if req.response_format == "text":  # as OpenAI answers it: the transcript and a newline
        return web.Response(text=text + "\n", content_type="text/plain",
                            headers={USAGE_HEADER: orjson.dumps(usage).decode()})
    if req.response_format == "json":
        return json_response({"text": text, "usage": usage})
    return json_response({"task": "transcribe", "language": language, "duration": round(done.duration, 3),
                          "text": text, "segments": segments(done), "usage": usage})


def segments(done: Transcribed) -> list[dict]:
    """verbose_json's segments: the model's timestamped ones, within the audio (a model may write a timestamp
    past its end: clamped to the duration); one over the whole file for a model without timestamps. Each has
    its window's seek, avg_logprob and no_speech_prob, as OpenAI's do (the AI SDK's schema requires them)."""
    out = []
    for i, seg in enumerate(done.transcript.segments):
        text = seg["text"]
        data = text.encode("utf-8")
        out.append({"id": i, "seek": seg["seek"], "start": round(min(seg["start"], done.duration), 2),
                    "end": round(min(seg["end"], done.duration), 2), "text": text, "tokens": seg["tokens"],
                    "temperature": done.temperature, "avg_logprob": seg["avg_logprob"],
                    "compression_ratio": round(len(data) / len(zlib.compress(data)), 3) if data else 0.0,
                    "no_speech_prob": seg["no_speech_prob"]})
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, transcriptions)
