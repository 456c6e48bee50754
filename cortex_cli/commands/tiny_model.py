"""`cortex tiny-model`: write a small random-weight model for tests and demos."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("tiny-model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["chat", "rerank", "image", "transcribe", "vision"]), default="chat",
              show_default=True,
              help="chat: a Llama model; rerank: a BERT cross-encoder (one label, a WordPiece tokenizer); image: "
                   "a Stable Diffusion pipeline (diffusers folder, 64x64 images; only --seed applies); transcribe: "
                   "a Whisper model with its processor (hf); vision: a Llava chat model with its processor "
                   "(hf, 32x32 images of 16 tokens; --format gguf: OUT.gguf and its projector OUT.mmproj.gguf).")
@click.option("--format", "fmt", type=click.Choice(["gguf", "hf"]), default=None,
              help="gguf or a Hugging Face folder (hf)  [default: gguf for chat, hf for rerank]")
@click.option("--layers", type=click.IntRange(min=1, max=64), default=2, show_default=True)
@click.option("--dim", type=click.IntRange(min=16, max=4096), default=64, show_default=True,
              help="Hidden size, a multiple of 16.")
@click.option("--vocab", type=click.IntRange(min=300, max=32000), default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--context", type=click.IntRange(min=64), default=2048, show_default=True)
@click.option("--template", type=click.Choice(["chatml-tools", "chatml"]), default="chatml-tools", show_default=True,
              help="Chat template: ChatML with Qwen-style tools, or plain ChatML (no tools, as SmolLM2's).")
@click.option("--split-tensors", type=click.IntRange(min=0), default=0, metavar="N",
              help="GGUF: write a split file (OUT-00001-of-0000K.gguf, ...) of at most N tensors per part.")
def tiny_model(out, kind, fmt, layers, dim, vocab, seed, context, template, split_tensors) -> None:
    """Write a deterministic random-weight model to OUT: a Llama chat model (real tokenizer and chat
    template), or with --kind rerank a BERT cross-encoder.

    The weights are random: it answers gibberish (or ranks arbitrarily), quickly. It exists so tests
    and first runs have a real model without downloading one.
    """
    if kind == "image":
        from neuron.tiny.image import TinyImageSpec, write_tiny_image

        if fmt == "gguf":  # stable-diffusion.cpp's GGUFs are not served: a diffusers folder is what loads
            raise click.UsageError("--kind image writes a diffusers folder only: leave out --format gguf")
        click.echo(f"wrote diffusers image model to {write_tiny_image(out, TinyImageSpec(seed=seed))}")
        return
    if kind == "transcribe":
        click.echo(f"wrote hf transcription model to {_whisper(out, fmt, layers, dim, vocab, seed)}")
        return
    if kind == "vision":
        click.echo(f"wrote {fmt or 'hf'} vision model to {_vision(out, fmt, layers, dim, vocab, seed, context)}")
        return
    if kind == "rerank":
        path = _rerank(out, fmt, layers, dim, vocab, seed, min(context, 512))
        click.echo(f"wrote {fmt or 'hf'} rerank model to {path}")
        return
    from neuron.tiny.model import TinySpec, write_tiny_model

    fmt = fmt or "gguf"
    spec = TinySpec(layers=layers, dim=dim, vocab=vocab, seed=seed, context=context, template=template,
                    split_tensors=split_tensors)
    try:
        path = write_tiny_model(out, fmt, spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {fmt} model to {path}")


def _rerank(out, fmt, layers, dim, vocab, seed, context):
    """A cross-encoder: a Hugging Face folder, or the same model as a rerank GGUF; BERT's 512 positions at
    most, as the real ones have."""
    from neuron.tiny.rerank import TinyRerankSpec, write_tiny_rerank
    from neuron.tiny.rerank_gguf import write_tiny_rerank_gguf

    spec = TinyRerankSpec(layers=layers, dim=dim, vocab=vocab, seed=seed, context=context)
    try:
        return write_tiny_rerank_gguf(out, spec) if fmt == "gguf" else write_tiny_rerank(out, spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _whisper(out, fmt, layers, dim, vocab, seed):
    """A Whisper model: a Hugging Face folder only (no GGUF runtime here transcribes)."""
    from neuron.tiny.whisper import TinyWhisperSpec, write_tiny_whisper

    if fmt == "gguf":
        raise click.UsageError("--kind transcribe writes a Hugging Face folder only: leave out --format gguf")
    try:
        return write_tiny_whisper(out, TinyWhisperSpec(layers=layers, dim=dim, vocab=vocab, seed=seed))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _vision(out, fmt, layers, dim, vocab, seed, context):
    """A Llava model and its processor (a Hugging Face folder), or with --format gguf the language model
    GGUF and its multimodal projector beside it (OUT.gguf and OUT.mmproj.gguf), as llama.cpp reads them."""
    from neuron.tiny.vision import TinyVisionSpec, write_tiny_vision

    spec = TinyVisionSpec(layers=layers, dim=dim, vocab=vocab, seed=seed, context=context)
    if fmt == "gguf":
        from neuron.tiny.vision_gguf import write_tiny_vision_gguf as write
    else:
        write = write_tiny_vision
    try:
        return write(out, spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
