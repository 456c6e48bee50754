"""Deleting a model from this node's disk (`cortex rm`): only a model of the catalogue, only one not loaded.

A symlink in the models directory (the demo's SmolLM2, a model kept elsewhere)
is removed as a link: what it points at is not the catalogue's to delete. Every
part of a split GGUF goes, and the pull index forgets the model, so a later
load of its source pulls it again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from neuron.catalog import ModelRef, scan
from neuron.errors import ApiError

STAGING, INDEX = ".pulls", "index.json"


def delete_model(models_dir: Path, model: str, loaded: set[str]) -> ModelRef:
    ref = next((r for r in scan(models_dir) if r.id == model), None)
    if ref is None:
        raise ApiError(404, "not_found_error", f"model {model!r} is not in this node's models directory",
                       code="model_not_found", param="model")
    if model in loaded:
        raise ApiError(409, "invalid_request_error", f"model {model!r} is loaded: unload it first "
                       "(`cortex unload NODE MODEL`)", code="model_loaded", param="model")
    for path in _paths_of(models_dir, ref):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    _forget(models_dir, {p.name for p in _paths_of(models_dir, ref)} | {Path(ref.path).name})
    return ref


def _paths_of(models_dir: Path, ref: ModelRef) -> list[Path]:
    path = Path(ref.path)
    if ref.format == "gguf" and "-of-" in path.stem:
        prefix = path.stem.rsplit("-", 3)[0]
        return sorted(models_dir.glob(f"{prefix}-*-of-*.gguf"))
    return [path]


def _forget(models_dir: Path, names: set[str]) -> None:
    index_path = models_dir / STAGING / INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return
    kept = {source: name for source, name in index.items() if name not in names}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=1, sort_keys=True))
    os.replace(tmp, index_path)
