"""Whisper-family transcription models on torch: `WhisperForConditionalGeneration` with its processor.

A transcript is decoded as openai-whisper's `transcribe` decodes one, with timestamps: the same text whatever
the response_format (verbose_json's segments are read from the same tokens), and audio longer than one
30-second window goes through transformers' long-form decoding (window after window, each starting at the
last timestamp). A checkpoint whose generation config has no timestamp tokens is decoded without them, one
window at most, and answers one segment over the whole file. Greedy unless a temperature is asked for,
with no fallback schedule: the same audio, the same text. `generate` runs on the device thread (one job per
request); features are computed on the tokenizer threads (`neuron.engine.transcribe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuron.engine.audio import import_soundfile
from neuron.engine.backends.base import Backend, BackendSpec
from neuron.engine.backends.torch_hf import _config_flag
from neuron.engine.backends.torch_place import torch_place
from neuron.shared.errors import bad_request
from neuron.shared.transcription_fields import MAX_AUDIO_S

WINDOW_S = 30.0  # Whisper's input window: 3000 mel frames


@dataclass(frozen=True)
class Decoding:
    """How one request is decoded: its language (None: the model detects it), prompt ids, temperature."""

    language: str | None
    prompt_ids: list[int]
    temperature: float
    detect: bool  # the answer names the language (verbose_json): detect it first when none was given


@dataclass
class Transcript:
    text: str
    language: str | None
    segments: list[dict] = field(default_factory=list)  # start, end (seconds), tokens, text
    generated: int = 0  # tokens the model wrote, timestamps included
    timestamped: bool = True  # False: one segment stands for the whole file


class TorchWhisperBackend(Backend):
    name = "torch"

    def __init__(self, spec: BackendSpec):
        if spec.gguf_file:
            raise ValueError("torch opens Whisper models from Hugging Face folders")
        import_soundfile()  # a node that cannot decode audio says so at load, not at the first request
        place = torch_place(spec)
        transformers, self.torch, self.device = place.transformers, place.torch, place.device
        self.processor = transformers.AutoProcessor.from_pretrained(str(spec.path))
        self.model = transformers.WhisperForConditionalGeneration.from_pretrained(str(spec.path),
                                                                                   **place.load_kwargs())
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        self.sampling_rate = self.processor.feature_extractor.sampling_rate
        gen = self.model.generation_config
        self.timestamps = getattr(gen, "no_timestamps_token_id", None) is not None
        self.multilingual = bool(getattr(gen, "is_multilingual", False))
        self.languages = {code.strip("<|>"): token for code, token in (getattr(gen, "lang_to_id", None) or {}).items()}
        self.max_seconds = MAX_AUDIO_S if self.timestamps else WINDOW_S
        self.context_size = self.model.config.max_target_positions  # the decoder's positions
        self.vocab_size = self.model.config.vocab_size
        self.is_tiny = _config_flag(spec)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Whisper's previous-text prompt: <|startofprev|> and the text, checked to leave the decoder room."""
        ids = [int(i) for i in self.processor.get_prompt_ids(prompt)]
        limit = self.context_size // 2 - 1
        if len(ids) > limit:
            raise bad_request(f"prompt: {len(ids)} tokens, over this model's limit of {limit} (half its decoder "
                              "positions, less one); shorten it, keeping its end", param="prompt",
                              code="prompt_too_long")
        return ids

    def check_language(self, language: str | None) -> str | None:
        if language is None or not self.multilingual:
            if language not in (None, "en"):
                raise bad_request(f"language: this model transcribes English only, got {language!r}",
                                  param="language")
            return None  # an English-only model takes no language token
        if language not in self.languages:
            raise bad_request(f"language: {language!r} is not one this model knows; send an ISO-639-1 code such "
                              f"as {', '.join(sorted(self.languages)[:5])}, or none to detect it", param="language")
        return language

    def language_name(self, code: str | None) -> str | None:
        """As OpenAI names a transcript's language in verbose_json: "english", not "en"."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        if code is None:
            return None if self.multilingual else "english"
        return LANGUAGES.get(code, code)

    def features(self, audio: np.ndarray) -> dict:
        """Log-mel features (one window, padded; or the whole file, unpadded, for long-form) and their mask."""
        long = len(audio) > WINDOW_S * self.sampling_rate
        extra = {"truncation": False, "padding": "longest"} if long else {}
        out = self.processor.feature_extractor(audio, sampling_rate=self.sampling_rate, return_tensors="pt",
                                               return_attention_mask=True, **extra)
        return {"input_features": out["input_features"], "attention_mask": out["attention_mask"]}

    def transcribe(self, features: dict, decoding: Decoding) -> Transcript:
        """Generate the transcript (on the device thread)."""
        torch = self.torch
        inputs = {k: v.to(self.device) for k, v in features.items()}
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        with torch.inference_mode():
            language = decoding.language
            if language is None and decoding.detect and self.multilingual:
                language = self._detect(inputs["input_features"])
            out = self.model.generate(**self._kwargs(inputs, decoding, language))
        return self._transcript(out, language)

    def _kwargs(self, inputs: dict, decoding: Decoding, language: str | None) -> dict:
        kwargs = {**inputs, "return_timestamps": self.timestamps, "return_segments": self.timestamps}
        if self.multilingual:
            kwargs["task"] = "transcribe"
            if language is not None:
                kwargs["language"] = language
        if decoding.prompt_ids:
            kwargs["prompt_ids"] = self.torch.tensor(decoding.prompt_ids, device=self.device)
        if decoding.temperature > 0:
            kwargs.update(do_sample=True, temperature=decoding.temperature)
        return kwargs

    def _detect(self, features) -> str | None:
        token = int(self.model.detect_language(features[..., :3000])[0])
        return next((code for code, t in self.languages.items() if t == token), None)

    def _transcript(self, out, language: str | None) -> Transcript:
        decode = self.tokenizer.decode
        sequences = out["sequences"] if isinstance(out, dict) else out
        text = decode(sequences[0], skip_special_tokens=True).strip()
        if not isinstance(out, dict):
            return Transcript(text, language, [], int(sequences.shape[-1]), timestamped=False)
        segments = [{"start": float(s["start"]), "end": float(s["end"]), "tokens": [int(t) for t in s["tokens"]],
                     "text": decode(s["tokens"], skip_special_tokens=True)} for s in out["segments"][0]]
        return Transcript(text, language, segments, sum(len(s["tokens"]) for s in segments))

    def detokenizer(self, skip_special: bool = True):
        raise RuntimeError("a transcription model does not generate text from text")  # refused by the registry

    def is_end(self, token: int) -> bool:
        return False

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        raise RuntimeError("a transcription model does not embed")  # refused before this, by the registry

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
