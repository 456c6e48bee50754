"""Transcribing one request: decode and bound the audio, read the prompt and language, features, one device job.

Everything but `generate` runs on the engine's tokenizer threads (decoding, resampling, the log-mel features,
the prompt's tokens), so the device thread and the event loop only see the model's own work. The usage is
what metering bills: the audio's seconds, and as tokens the encoder positions the audio fills (50 a second,
Whisper's rate: 1500 per 30-second window) plus the prompt's tokens, and the tokens written.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass

from neuron.engine.audio import decode
from neuron.engine.backends.torch_whisper import Decoding, Transcript
from neuron.engine.worker import DeviceWorker
from neuron.server.audio_schema import TranscriptionRequest
from neuron.shared.audio_bound import POSITIONS_PER_S


@dataclass
class Transcribed:
    transcript: Transcript
    duration: float  # seconds of audio
    prompt_tokens: int
    temperature: float

    def usage(self) -> dict:
        """OpenAI's duration usage (`type`, `seconds`), with the tokens metering bills beside it."""
        completion = self.transcript.generated
        return {"type": "duration", "seconds": round(self.duration, 3), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion}


async def transcribe(backend, worker: DeviceWorker, pool: Executor, req: TranscriptionRequest) -> Transcribed:
    loop = asyncio.get_running_loop()
    language = backend.check_language(req.language)
    audio, duration = await loop.run_in_executor(pool, decode, req.audio, backend.sampling_rate, backend.max_seconds)
    prompt = await loop.run_in_executor(pool, backend.prompt_ids, req.prompt) if req.prompt else []
    features = await loop.run_in_executor(pool, backend.features, audio)
    decoding = Decoding(language, prompt, req.temperature, detect=req.response_format == "verbose_json")
    transcript = await worker.call(lambda: backend.transcribe(features, decoding))
    return Transcribed(transcript, duration, math.ceil(duration * POSITIONS_PER_S) + len(prompt), req.temperature)
