"""The vision chat GGUF rows of `benchmarks/kinds.py`: a tiny LLaVA-style GGUF and its projector, the same
chat done

  (a) raw: llama-cpp-python here, its own multimodal chat handler (MTMDChatHandler over llama.cpp's mtmd)
      on a context like one of the backend's slots (the backend's per-sequence context, prefill chunk and
      thread counts), greedy, exactly VISION_TOKENS new tokens (the end tokens banned), and
  (b) served: the official openai client through a real `cortex serve` to the neuron's llama.cpp vision
      backend (`neuron.engine.backends.llamacpp_vision`), the same image as a data URL.

Kept apart from kinds.py so that each module stays one concern and short.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from neuron.engine.backends.llamacpp_log import route_mtmd_log
from neuron.engine.batching import prefill_chunk
from neuron.server.catalog import default_context

QUESTION = "what is in the picture"


def end_ids(llm) -> set[int]:
    """Every end-of-generation token of the GGUF's vocabulary: banned on both sides, so both make VISION_TOKENS."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}


def content(with_image: bool, url: str) -> list[dict]:
    """The user message's parts, as the torch vision rows send them: the question, then the image."""
    parts = [{"type": "text", "text": QUESTION}]
    return parts + ([{"type": "image_url", "image_url": {"url": url}}] if with_image else [])


def vision_gguf_raw(model: Path, projector: Path, picture: bytes, tokens: int):
    """(chat, end ids, llm): `chat(with_image)` is one greedy chat completion in this process."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp.llama_chat_format import MTMDChatHandler

    route_mtmd_log(llama_cpp, mtmd)  # as the neuron does: mtmd's per-image lines to logging, not raw stderr
    cores = os.cpu_count() or 1
    handler = MTMDChatHandler(str(projector), verbose=False, use_gpu=False)
    chunk = prefill_chunk(False)
    llm = llama_cpp.Llama(str(model), chat_handler=handler, n_ctx=default_context(model), n_batch=chunk,
                          n_ubatch=chunk, n_threads=max(cores // 2, 1), n_threads_batch=cores, n_gpu_layers=0,
                          verbose=False)
    ends = end_ids(llm)
    url = "data:image/png;base64," + base64.b64encode(picture).decode()

    def chat(with_image: bool) -> None:
        answer = llm.create_chat_completion(messages=[{"role": "user", "content": content(with_image, url)}],
                                            max_tokens=tokens, temperature=0, repeat_penalty=1.0,
                                            logit_bias={i: -100.0 for i in ends})
        assert answer["usage"]["completion_tokens"] == tokens, answer["usage"]
    return chat, ends, llm


def vision_gguf_served(client, model: str, picture: bytes, tokens: int, ends: set[int]):
    url = "data:image/png;base64," + base64.b64encode(picture).decode()

    def chat(with_image: bool) -> None:
        answer = client.chat.completions.create(model=model,
                                                messages=[{"role": "user", "content": content(with_image, url)}],
                                                max_tokens=tokens, temperature=0,
                                                logit_bias={str(i): -100 for i in ends})
        assert answer.usage.completion_tokens == tokens, answer.usage
    return chat


def vision_gguf_rows(models: Path, client, picture: bytes, tokens: int, rounds: int, measure, row,
                     progress) -> list[dict]:
    """The two rows, an image and none; `measure`, `row` and `progress` are kinds.py's own."""
    raw, ends, llm = vision_gguf_raw(models / "vision-gguf.gguf", models / "vision-gguf.mmproj.gguf", picture,
                                     tokens)
    served, rows = vision_gguf_served(client, "vision-gguf", picture, tokens, ends), []
    try:
        for with_image in (True, False):
            label = f"vision chat GGUF, {'an image' if with_image else 'no image'}, {tokens} tokens"
            progress(label)
            a = measure(lambda w=with_image: raw(w), rounds)
            b = measure(lambda w=with_image: served(w), rounds)
            rows.append(row(label, a, b, f"{tokens / b:.0f} tokens/s (raw {tokens / a:.0f})"))
    finally:
        llm.close()
    return rows
