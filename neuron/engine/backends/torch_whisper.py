"""Whisper-family transcription models on torch: `WhisperForConditionalGeneration` with its processor.

A transcript is decoded as openai-whisper's `transcribe` decodes one, with timestamps: the same text whatever
the response_format (verbose_json's segments are read from the same tokens), and audio longer than one
30-second window goes through transformers' long-form decoding (window after window, each starting at the
last timestamp). A checkpoint whose generation config has no timestamp tokens is decoded without them, one
window at most, and answers one segment over the whole file. Greedy unless a temperature is asked for,
with no fallback schedule: the same audio, the same text. `generate` runs on the device thread (one job per
request); features are computed on the tokenizer threads (`neuron.engine.transcribe`).

Each window also gives what openai-whisper puts on every segment it cuts from that window, and clients (the
AI SDK's schema) require: `seek`, the window's first mel frame (10 ms each), as transformers' long-form loop
reports it to `monitor_progress`; `avg_logprob`, the window's sampled tokens' log-probabilities (the end token
included) summed over their count, as whisper's decoder sums them, by a logits processor that keeps
one row (`output_scores` would keep every step's: hundreds of MB a window on a real vocabulary);
`no_speech_prob`, the softmax of the logits at the start-of-transcript position at the no-speech token, read
by a hook from the window's own prefill (no extra forward pass).
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
    segments: list[dict] = field(default_factory=list)  # start, end (seconds), tokens, text, and the window's
    # seek, avg_logprob, no_speech_prob
    generated: int = 0  # tokens the model wrote, timestamps included


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
        vocab = self.tokenizer.get_vocab()  # whisper names it <|nocaptions|> in v1 checkpoints, <|nospeech|> after
        self.no_speech = next(vocab[t] for t in ("<|nospeech|>", "<|nocaptions|>") if t in vocab)

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
            windows = _Windows(self.model.generation_config.decoder_start_token_id, self.no_speech)
            hook = self.model.register_forward_hook(windows.prefill, with_kwargs=True)
            try:
                out = self.model.generate(**self._kwargs(inputs, decoding, language), monitor_progress=windows.begin,
                                          logits_processor=[windows])
            finally:
                hook.remove()
        return self._transcript(out, language, windows)

    def _kwargs(self, inputs: dict, decoding: Decoding, language: str | None) -> dict:
        kwargs = {**inputs, "return_timestamps": self.timestamps, "return_segments": self.timestamps,
                  "return_dict_in_generate": True}  # each window's sequence: its last token
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

    def _transcript(self, out, language: str | None, windows: _Windows) -> Transcript:
        decode, eos = self.tokenizer.decode, self.model.generation_config.eos_token_id
        if "segments" not in out:  # no timestamps: one window, one segment over the whole file
            tokens = out["sequences"][0][windows.prefixes[0]:]
            stats = windows.stats(0, int(out["sequences"][0][-1]), eos)
            text = decode(tokens, skip_special_tokens=True).strip()
            whole = {"start": 0.0, "end": WINDOW_S, "tokens": [int(t) for t in tokens], "text": text, **stats}
            return Transcript(text, language, [whole], len(tokens))
        found, results = out["segments"][0], []
        for s in found:  # each window's segments share its generate call's output: the window, in order
            if not results or results[-1] is not s["result"]:
                results.append(s["result"])
        by_result, window = {}, -1
        for r in results:
            window = windows.window_of(r["sequences"], window)
            by_result[id(r)] = windows.stats(window, int(r["sequences"].reshape(-1)[-1]), eos)
        segments = [{"start": float(s["start"]), "end": float(s["end"]), "tokens": [int(t) for t in s["tokens"]],
                     "text": decode(s["tokens"], skip_special_tokens=True), **by_result[id(s["result"])]}
                    for s in found]
        text = decode(out["sequences"][0], skip_special_tokens=True).strip()
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


class _Windows:
    """What transformers' decoding loop shows of each 30-second window, recorded as it runs, in memory of one
    vocabulary row per window:
    - the frame it begins at (`monitor_progress` is called once a window, before its `generate`);
    - from the first forward after that (the window's prefill, whose logits cover every decoder input
      position), its prompt's length and the no-speech probability at the start-of-transcript token, as
      openai-whisper reads it (raw logits, softmax);
    - as the last logits processor passed in (after the timestamp rules; generate's temperature and top-k
      warpers run after it, as whisper's decoder takes its log-probabilities before the temperature), the
      running sum of each chosen token's log-probability: a step's scores are kept until the next step shows
      which token was taken from them, the window's last from its final sequence."""

    def __init__(self, sot: int, no_speech: int):
        self.sot, self.no_speech = sot, no_speech
        self.seeks: list[int] = []
        self.prefixes: list[int] = []
        self.no_speech_probs: list[float] = []
        self.sums: list[float] = []
        self.counts: list[int] = []
        self.last: list = []  # each window's latest step's log-probabilities
        self.seen: list = []  # and the ids that step was given: its sequence less the last token

    def begin(self, progress) -> None:
        self.seeks.append(int(progress[0, 0]))

    def prefill(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("decoder_input_ids")
        if len(self.prefixes) == len(self.seeks) or ids is None:  # a decode step, or detection before the loop
            return
        row = ids[0].tolist()
        at = len(row) - 1 - row[::-1].index(self.sot)  # after any previous-text prompt
        self.prefixes.append(len(row))
        self.no_speech_probs.append(float(output.logits[0, at].float().softmax(-1)[self.no_speech]))

    def __call__(self, input_ids, scores):
        if len(self.sums) < len(self.seeks):  # a window's first step
            self.sums.append(0.0)
            self.counts.append(0)
            self.last.append(None)
            self.seen.append(None)
        else:  # the token taken from the previous step's scores
            self.sums[-1] += float(self.last[-1][int(input_ids[0, -1])])
            self.counts[-1] += 1
        self.last[-1] = scores[0].float().log_softmax(-1)
        self.seen[-1] = input_ids[0]
        return scores

    def window_of(self, sequence, after: int) -> int:
        """The window (past index `after`) whose generate call gave this sequence: a window that wrote no
        segment has no result in transformers' output, so results and windows need not pair by position."""
        ids = sequence.reshape(-1).tolist()
        return next(i for i in range(after + 1, len(self.seen))
                    if self.seen[i] is not None and self.seen[i].tolist() == ids[:-1])

    def stats(self, i: int, final: int, eos: int) -> dict:
        """Window i's seek, no_speech_prob and avg_logprob, as whisper's decoder sums it: every chosen token's
        log-probability, the end token included, over the tokens less the end token plus one."""
        total, count = self.sums[i], self.counts[i]
        if self.last[i] is not None:
            total, count = total + float(self.last[i][final]), count + 1
        tokens = count - int(count > 0 and final == eos)
        return {"seek": self.seeks[i], "avg_logprob": total / (tokens + 1), "no_speech_prob": self.no_speech_probs[i]}
