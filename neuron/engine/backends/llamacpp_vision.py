"""Vision chat GGUFs on llama.cpp: the language model and its multimodal projector, through llama.cpp's mtmd.

The projector (`mmproj`, found beside the model by `neuron.server.gguf_projector`) is opened with
`mtmd_init_from_file` over the loaded model, on the load's devices, and freed at unload. A request's
messages are rendered with the chat template, each image part written as mtmd's media marker, and
split, as every prompt here is, into the template's markup and the client's text: client text is
tokenised as plain text, and each marker in the markup becomes that image's chunks (mtmd_tokenize with
its bitmap: the image's embedding positions, and whatever text tokens the model puts around an image).
So the prompt's length, usage's prompt_tokens and `/tokenize` count the image's tokens as the model
reads them. An image position holds `IMAGE_TOKEN` (-1) in the prompt's ids, which no text token
equals: a cached prefix never reaches past a prompt's first image. The continuous batcher
(`llamacpp_vision_batch`) evaluates the images into the request's sequence, then decodes it with the
others.

Models whose images take M-RoPE positions (Qwen2-VL and kin) or non-causal attention (Gemma 3) are
refused at load: their positions and masks differ from the one-cell-per-token layout the batcher keeps.
"""

from __future__ import annotations

import ctypes
import logging
import os

from neuron.engine.backends.base import BackendSpec
from neuron.engine.backends.llamacpp import LlamaCppBackend
from neuron.engine.backends.llamacpp_log import route_mtmd_log
from neuron.engine.backends.llamacpp_vision_batch import IMAGE_TOKEN, ImageSpan, VisionBatcher, VisionPrompt
from neuron.engine.client_text import Markers, Segment, mark_message
from neuron.engine.prompt import chat_segments, check_stopped, prompt_segments, tokenize_segments
from neuron.server.gguf_projector import projector_for
from neuron.server.openai_schema import InferenceRequest
from neuron.shared.errors import bad_request

log = logging.getLogger("cortex.neuron.engine.backends.llamacpp_vision")


class LlamaVisionBackend(LlamaCppBackend):
    reads_images = True
    batcher_class = VisionBatcher

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        import llama_cpp.mtmd_cpp as mtmd

        route_mtmd_log(self.llama_cpp, mtmd)
        self.mtmd_lib, self.mtmd = mtmd, None
        try:
            self.mtmd = self._open_projector(spec)
        except BaseException:
            self.close()
            raise
        self.marker = (mtmd.mtmd_default_marker() or b"<__media__>").decode()
        self.batcher.mtmd = self.mtmd

    def _open_projector(self, spec: BackendSpec):
        projector = projector_for(spec.path)
        if projector is None:
            raise bad_request(f"{spec.path.name}: no multimodal projector beside it (NAME.mmproj.gguf, or the one "
                              "mmproj*.gguf of its folder)", code="vision_not_supported", param="model")
        mtmd = self.mtmd_lib
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.print_timings = bool(self.gpus), False
        params.n_threads = os.cpu_count() or 1
        ctx = mtmd.mtmd_init_from_file(str(projector).encode(), self.model.model, params)
        if not ctx:
            raise bad_request(f"llama.cpp's mtmd could not open the projector {projector.name} for this model "
                              "(see the neuron's log)", code="vision_not_supported", param="model")
        refusal = _refusal(mtmd, ctx)
        if refusal:
            mtmd.mtmd_free(ctx)
            raise bad_request(f"{projector.name}: {refusal}; cortex's llama.cpp backend serves vision models whose "
                              "images take causal, one-position-per-token attention (LLaVA and kin): load the "
                              "model's Hugging Face folder on backend torch", code="vision_not_supported",
                              param="model")
        return ctx

    # -- the prompt, on a tokenizer thread ------------------------------------------------------------
    def prompt_of(self, req: InferenceRequest, model: str, stop=None) -> VisionPrompt:
        """The request's prompt ids with its images' positions in place, and the chunks to evaluate them."""
        if req.prompt is not None or not req.images:  # text alone: a typed marker is text like any other
            return VisionPrompt(tokenize_segments(self, prompt_segments(self, req, model), stop))
        return self._encode(chat_segments(self, req, model, self._marked), list(req.images), stop)

    def _marked(self, message: dict, mk: Markers) -> dict:
        """Client text marked; each image part becomes a text part holding the media marker, unmarked, so
        the marker is template markup (a marker a user types stays text)."""
        content = message.get("content")
        if not isinstance(content, list):
            return mark_message(message, mk)
        parts = [{"type": "text", "text": mk.mark(p["text"])} if p.get("type") == "text"
                 else {"type": "text", "text": self.marker} if p.get("type") == "image" else p for p in content]
        return {**message, "content": parts}

    def _encode(self, segments: list[Segment], images: list, stop) -> VisionPrompt:
        ids = VisionPrompt()
        for seg in segments:
            check_stopped(stop)
            if not seg.special:
                ids.extend(self.tokenize(seg.text, special=False) if seg.text else [])
                continue
            pieces = seg.text.split(self.marker)
            for i, piece in enumerate(pieces):
                if piece:
                    ids.extend(self.tokenize(piece, special=True))
                if i < len(pieces) - 1:
                    if not images:
                        raise bad_request("messages: the prompt has an image marker that no image part fills",
                                          param="messages")
                    self._add_image(ids, images.pop(0))
        if images:
            raise bad_request(f"{images[0].where}: the model's chat template left this image out of the prompt "
                              "(it wrote fewer image markers than the messages have images)", param="messages")
        if ids and ids[-1] == IMAGE_TOKEN:  # the first token is sampled from the logits of a text token
            raise bad_request("messages: the prompt ends with an image; add text after it", param="messages")
        return ids

    def _add_image(self, ids: VisionPrompt, image) -> None:
        """The image's chunks at the end of `ids`: text tokens as ids, image embeddings as IMAGE_TOKEN positions."""
        mtmd = self.mtmd_lib
        chunks = _tokenize_image(mtmd, self.mtmd, self.marker, image)
        ids.owners.append(chunks)
        for i in range(mtmd.mtmd_input_chunks_size(chunks.ptr)):
            chunk = mtmd.mtmd_input_chunks_get(chunks.ptr, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                ids.extend(tokens[k] for k in range(n.value))
                continue
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise bad_request(f"{image.where}: this model's projector reads no images", param="messages")
            count = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            ids.images.append(ImageSpan(len(ids), count, chunk))
            ids.extend([IMAGE_TOKEN] * count)

    def embed(self, inputs):
        raise bad_request("vision chat models do not serve /v1/embeddings here; use an embedding model",
                          code="vision_model", param="model")

    def close(self) -> None:
        # On the device thread, so no image is being evaluated: the projector goes before the model it reads.
        if getattr(self, "mtmd", None):
            self.mtmd_lib.mtmd_free(self.mtmd)
            self.mtmd = None
        super().close()


class _Chunks:
    """An mtmd chunk list, freed when the prompt holding it goes (its requests are done with it then)."""

    def __init__(self, mtmd):
        self.mtmd, self.ptr = mtmd, mtmd.mtmd_input_chunks_init()

    def __del__(self):
        if self.ptr:
            self.mtmd.mtmd_input_chunks_free(self.ptr)
            self.ptr = None


def _tokenize_image(mtmd, ctx, marker: str, image) -> _Chunks:
    """One image, decoded and preprocessed by mtmd: the chunks of its marker alone."""
    data = bytes(image.data)
    bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, (ctypes.c_uint8 * len(data)).from_buffer_copy(data),
                                                   len(data), False)
    if not bitmap:
        raise bad_request(f"{image.where}: llama.cpp could not decode this image", param="messages")
    chunks = _Chunks(mtmd)
    try:
        text = mtmd.mtmd_input_text()
        encoded = marker.encode()
        text.text, text.text_len, text.add_special, text.parse_special = encoded, len(encoded), False, True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        ret = mtmd.mtmd_tokenize(ctx, chunks.ptr, ctypes.byref(text), bitmaps, 1)
    finally:
        mtmd.mtmd_bitmap_free(bitmap)
    if ret != 0:
        raise bad_request(f"{image.where}: llama.cpp's mtmd could not read this image (status {ret})",
                          param="messages")
    return chunks


def _refusal(mtmd, ctx) -> str:
    """Why the batcher cannot serve this projector's images, or ''."""
    if not mtmd.mtmd_support_vision(ctx):
        return "the projector reads no images"
    if mtmd.mtmd_decode_use_mrope(ctx):
        return "its images take M-RoPE positions (several per token)"
    if mtmd.mtmd_decode_use_non_causal(ctx, None):
        return "its images are decoded with non-causal attention"
    return ""
