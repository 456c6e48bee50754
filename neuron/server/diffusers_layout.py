"""A diffusers pipeline folder as the catalog reads it: model_index.json naming its components, each in a
folder of its own (unet/, vae/, text_encoder/, ...), and which of their weight files a load reads.

Apart from the catalog so that sizing a pipeline (many folders, variants of one file) stays out of its way.
Light: no diffusers import, since the catalog is read on every listing.
"""

from __future__ import annotations

from pathlib import Path

INDEX = "model_index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_pipeline(path: Path) -> bool:
    return path.is_dir() and (path / INDEX).is_file()


def pipeline_weight_files(path: Path) -> list[Path]:
    """The files a default load reads, component by component: its safetensors where it has any (diffusers
    prefers them), else its .bin; without a variant (`*.fp16.safetensors`) where the plain file is there,
    since diffusers loads a variant only when asked. Counting every file would size a folder shipping
    both fp32 and fp16 copies at twice what it takes."""
    out: list[Path] = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
        if any(p.suffix == ".safetensors" for p in files):
            files = [p for p in files if p.suffix == ".safetensors"]
        plain = [p for p in files if "." not in p.stem]
        out += plain or files
    return out
