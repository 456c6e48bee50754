"""Vision chat models on torch: transformers image-text-to-text models with their processor.

Loaded with `AutoModelForImageTextToText` and `AutoProcessor`. A request's messages are rendered with
the processor's chat template (an image part as `{"type": "image"}`, which the template writes as the
model's image placeholder) and split, as every prompt here is, into the template's markup and the
client's text: client text is tokenised as plain text (never control tokens), and each markup piece
that holds image placeholders goes through the processor with its images, which expands each
placeholder into the image's tokens and gives the pixel tensors. So the prompt's length, usage's
prompt_tokens and `/tokenize` count the image's tokens as the model reads them.

Generation is not batched: each request runs alone on the model's device thread through
`model.generate` (`neuron.engine.backends.torch_vision_run`), admitted like any other (one slot), with
cortex's own sampler, grammars (response_format, forced tool calls), logprobs and text assembly.
Continuous batching of pixel inputs is left for later.
"""

from __future__ import annotations

import io
import logging

from neuron.engine.backends.base import Backend, BackendSpec, GuidanceTokenizer
from neuron.engine.backends.torch_hf import HFDetokenizer, TorchSampler, _encoders, _end_token_ids
from neuron.engine.backends.torch_place import torch_place
from neuron.engine.backends.torch_vision_run import VisionRunner
from neuron.engine.client_text import Markers, Segment, mark_message
from neuron.engine.prompt import chat_segments, check_stopped
from neuron.server.openai_schema import InferenceRequest, SamplingParams
from neuron.shared.errors import bad_request
from neuron.tiny.model import TINY_MARKER_KEY

log = logging.getLogger("cortex.neuron.engine.backends.torch_vision")
_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class VisionPrompt(list):
    """A prompt's token ids (a list, as every prompt is), carrying the processor's pixel tensors (`media`)
    to the runner, so the engine's prepare, admit and start path is the same for every model."""

    media: dict


class TorchVisionBackend(Backend):
    name = "torch"
    reads_images = True

    def __init__(self, spec: BackendSpec):
        place = torch_place(spec)
        self.torch, self.device, transformers = place.torch, place.device, place.transformers
        self.processor = transformers.AutoProcessor.from_pretrained(str(spec.path))
        self.tokenizer = self.processor.tokenizer
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(str(spec.path), **place.load_kwargs())
        self.model.eval()
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        self.context_size = min(spec.context_size or 1 << 30, getattr(text, "max_position_embeddings", 4096))
        self.chat_template = getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template or ""
        self.bos_token, self.eos_token = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        self.image_token = getattr(self.processor, "image_token", None) or "<image>"
        self.is_tiny = bool(getattr(config, TINY_MARKER_KEY, False))
        self._end_ids = _end_token_ids(self.model, self.tokenizer)
        self._encoders = _encoders(self.tokenizer)
        self.slots = 1
        self.batcher = VisionRunner(self)
        self.n_vocab = self.model.get_output_embeddings().out_features  # the logits' width (may pad the vocab)
        self._guidance = GuidanceTokenizer(self._build_guidance)

    # -- the prompt, on a tokenizer thread ------------------------------------------------------------
    def prompt_of(self, req: InferenceRequest, model: str, stop=None) -> VisionPrompt:
        """The request's prompt ids with its images' tokens in place, and the pixel tensors for them."""
        if req.prompt is not None:
            return self._encode([Segment(req.prompt, True)], [], stop)
        return self._encode(chat_segments(self, req, model, _marked), list(req.images), stop)

    def _encode(self, segments: list[Segment], images: list, stop) -> VisionPrompt:
        ids, media = VisionPrompt(), []
        for seg in segments:
            check_stopped(stop)
            wanted = seg.text.count(self.image_token) if seg.special else 0
            if wanted:
                piece = self._processed(seg.text, images[:wanted])
                images = images[wanted:]
                ids.extend(piece.pop("input_ids")[0].tolist())
                media.append({k: v for k, v in piece.items() if k not in _TEXT_KEYS})
            elif seg.text:
                ids.extend(self.tokenize(seg.text, special=seg.special))
        if images:  # a template that wrote fewer placeholders than the request has images
            raise bad_request(f"{images[0].where}: the model's chat template left this image out of the prompt "
                              "(it wrote fewer image placeholders than the messages have images)", param="messages")
        ids.media = _joined(self.torch, media)
        return ids

    def _processed(self, text: str, images: list) -> dict:
        from PIL import Image

        if len(images) < text.count(self.image_token):
            raise bad_request(f"messages: the prompt has an image placeholder ({self.image_token}) that no image "
                              "part fills", param="messages")
        pictures = [Image.open(io.BytesIO(image.data)).convert("RGB") for image in images]
        return dict(self.processor(text=text, images=pictures, return_tensors="pt", add_special_tokens=False))

    # -- what every backend provides -------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        encoder = self._encoders[special]
        if encoder is None:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        return encoder.encode(text, add_special_tokens=False).ids

    def sampler(self, params: SamplingParams) -> TorchSampler:
        gen = self.torch.Generator(device=self.device)
        gen.manual_seed(params.seed % (2**63) if params.seed is not None else self.torch.seed())
        return TorchSampler(self.torch, params, gen, self._end_ids)

    def is_end(self, token: int) -> bool:
        return token in self._end_ids

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.decode([token]).encode("utf-8")

    def detokenizer(self, skip_special: bool = True):
        return HFDetokenizer(self.tokenizer, skip_special)

    def guidance_tokenizer(self):
        return self._guidance.get()

    def _build_guidance(self):
        import llguidance.hf

        return llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.n_vocab)

    def embed(self, inputs):
        raise bad_request("vision chat models do not serve /v1/embeddings here; use an embedding model",
                          code="vision_model", param="model")

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _marked(message: dict, mk: Markers) -> dict:
    """A message with every client string marked; a content of parts has its text parts marked."""
    content = message.get("content")
    if not isinstance(content, list):
        return mark_message(message, mk)
    return {**message, "content": [{**p, "text": mk.mark(p["text"])} if p.get("type") == "text" else p
                                   for p in content]}


def _joined(torch, pieces: list[dict]) -> dict:
    """The processor's tensors of every image piece, in prompt order (concatenated on the first axis)."""
    keys = {k for piece in pieces for k in piece}
    return {k: torch.cat([p[k] for p in pieces if k in p], dim=0) for k in keys}
