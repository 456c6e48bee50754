"""Continuous batching of vision requests on llama.cpp: images evaluated by mtmd, then decoding as usual.

A request with images (its prompt a `VisionPrompt`) takes a free slot, reusing only the text its
cache holds before the prompt's first image (an image position is `IMAGE_TOKEN` in every cache, so
no prefix, cached or running, is shared across images). At its first step, before the step's batch,
its prompt up to the end of its last image is evaluated into its sequence: text runs through
`llama_decode`, each image through `mtmd_helper_eval_chunk_single` (the vision encoder, then its
embeddings). That step holds the other streams for as long as the images take. The prompt's text
after the last image is then an ordinary prefill, in chunks, with the rest of the batch, and the
sequence decodes with the others.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from neuron.engine.backends.llamacpp_batch import LlamaBatcher
from neuron.engine.batching import BatchRequest, Sequence, Slot, common_prefix
from neuron.shared.errors import ApiError

IMAGE_TOKEN = -1  # an image's position in a prompt's ids: no text token is negative


@dataclass(frozen=True)
class ImageSpan:
    """One image chunk of a prompt: where its positions start, how many, and mtmd's chunk."""

    start: int
    count: int
    chunk: Any


class VisionPrompt(list):
    """A prompt's ids (a list, as every prompt is) with its image chunks, and the chunk lists that own them."""

    def __init__(self, ids=()):
        super().__init__(ids)
        self.images: list[ImageSpan] = []
        self.owners: list = []


class VisionBatcher(LlamaBatcher):
    mtmd = None  # the model's mtmd context, set by the backend once its projector is open

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unevaluated: dict[int, list[ImageSpan]] = {}  # by slot: images a sequence has yet to evaluate

    def _begin(self, req: BatchRequest, free: list[Slot]) -> Sequence:
        images = getattr(req.prompt, "images", None)
        if not images or self._prefilling_leader(req) is not None:  # text, or a choice copying its leader's cache
            return super()._begin(req, free)
        text = req.prompt[:images[0].start]
        slot = max(free, key=lambda s: (common_prefix(s.cached, text), -s.last_used))
        keep = common_prefix(slot.cached, text)
        self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1)
        del slot.cached[keep:]
        req.text.stats.cached_tokens = keep
        self._unevaluated[slot.seq_id] = list(images)
        return Sequence(req, slot, self.make_sampler(req.params), list(req.prompt[keep:]))

    def _decode_and_sample(self, running: list[Sequence]) -> None:
        ready = []
        for seq in running:
            spans = self._unevaluated.pop(seq.slot.seq_id, None)
            if spans is None or self._evaluate(seq, spans):
                ready.append(seq)
        if ready:
            super()._decode_and_sample(ready)

    def _evaluate(self, seq: Sequence, spans: list[ImageSpan]) -> bool:
        """The prompt up to its last image into the sequence's cells; False (the request failed) if no room."""
        for span in spans:
            if not self._retrying(lambda s=span: self._decode_text(seq, s.start)):
                return self._no_room(seq)
            if not self._retrying(lambda s=span: self._eval_image(seq, s)):
                return self._no_room(seq)
        return True

    def _retrying(self, run) -> bool:
        """Run once; if the shared cache is full, give up idle slots' cached prefixes and run again."""
        if run() == 0:
            return True
        self._drop_idle_caches()
        return run() == 0

    def _decode_text(self, seq: Sequence, upto: int) -> int:
        """The pending text before prompt position `upto` (an image's start) into the sequence's cells."""
        batch, size = self.batch, self.chunk + len(self.slots)
        tokens = seq.pending[:upto - len(seq.slot.cached)]
        for at in range(0, len(tokens), size):
            piece, base = tokens[at:at + size], len(seq.slot.cached)
            for i, token in enumerate(piece):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, base + i, 1
                batch.seq_id[i][0], batch.logits[i] = seq.slot.seq_id, False
            batch.n_tokens = len(piece)
            ret = self.llama_cpp.llama_decode(self.ctx, batch)
            if ret != 0:
                return ret
            seq.slot.cached.extend(piece)
            del seq.pending[:len(piece)]
        return 0

    def _eval_image(self, seq: Sequence, span: ImageSpan) -> int:
        import llama_cpp.mtmd_cpp as mtmd

        n_past = len(seq.slot.cached)
        new_past = self.llama_cpp.llama_pos(n_past)
        ret = mtmd.mtmd_helper_eval_chunk_single(self.mtmd, self.ctx, span.chunk, n_past, seq.slot.seq_id,
                                                 self.chunk + len(self.slots), False, ctypes.byref(new_past))
        if ret != 0:
            self.llama_cpp.llama_memory_seq_rm(self.memory, seq.slot.seq_id, n_past, -1)
            return ret
        seq.slot.cached.extend(seq.pending[:span.count])
        del seq.pending[:span.count]
        return 0

    def _no_room(self, seq: Sequence) -> bool:
        """No room for the request's images even with idle caches dropped: it fails, retryably."""
        self.llama_cpp.llama_memory_seq_rm(self.memory, seq.slot.seq_id, len(seq.slot.cached), -1)
        seq.req.channel.fail(ApiError(503, "overloaded_error", "no room in the model's KV cache for this request's "
                                      "images now (other requests hold it); retry shortly", code="kv_cache_full",
                                      retry_after=1))
        self._release(seq)
        seq.slot.active = None
        return False

    def _release(self, seq: Sequence) -> None:
        self._unevaluated.pop(seq.slot.seq_id, None)
        super()._release(seq)

    def _reset(self) -> None:
        self._unevaluated.clear()
        super()._reset()
