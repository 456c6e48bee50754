"""Deleting a model from this node's disk (`cortex rm`): exactly its own files, never while one of them is loaded.

Only a model of the catalog goes. A symlink in the models directory (the
demo's SmolLM2, a model kept elsewhere) is removed as a link: what it points at
is not the catalog's to delete. A split GGUF's parts are named from its first
part's prefix, taken literally (`neuron.pulls.names.split_parts`): a glob such
as `prefix-*-of-*.gguf` reached other models whose names start alike, or any
part of a name holding `*` or `[`. A model is refused while a loaded model uses
one of its files under any id (a file inside its folder loaded by path, a
symlink to it). The answer lists what was deleted, and the pull index forgets
the model, so a later load of its source pulls it again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from neuron.pulls.names import split_parts
from neuron.server.catalog import ModelRef, scan
from neuron.shared.errors import ApiError
from neuron.shared.files import write_atomic

STAGING, INDEX = ".pulls", "index.json"


@dataclass(frozen=True)
class Deleted:
    id: str
    files: list[str]  # relative to the models directory; a folder's name ends with "/"
    freed_mb: float

    def to_dict(self) -> dict:
        return {"id": self.id, "deleted": True, "files": self.files, "size_mb": round(self.freed_mb, 1)}


def delete_model(models_dir: Path, model: str, loaded: dict[str, Path]) -> Deleted:
    """Delete catalog model `model`; `loaded` maps each loaded model's id to the file or folder it runs from."""
    ref = next((r for r in scan(models_dir) if r.id == model), None)
    if ref is None:
        raise ApiError(404, "not_found_error", f"model {model!r} is not in this node's models directory",
                       code="model_not_found", param="model")
    paths = files_of(models_dir, ref)
    if users := _users(paths, loaded):
        shown = "" if users == [model] else f" (as {', '.join(map(repr, users))})"
        raise ApiError(409, "invalid_request_error", f"model {model!r} is loaded{shown}: unload it first "
                       "(`cortex unload NODE MODEL`)", code="model_loaded", param="model")
    freed = sum(_bytes(p) for p in paths) / 2**20
    shown_files = [p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in paths]
    for path in paths:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    _forget(models_dir, {p.name for p in paths})
    return Deleted(ref.id, shown_files, freed)


def files_of(models_dir: Path, ref: ModelRef) -> list[Path]:
    """The file or folder of `ref`, or every part of a split GGUF by its exact name."""
    path = Path(ref.path)
    parts = split_parts(path.name) if ref.format == "gguf" else None
    if parts is None:
        return [path]
    return [models_dir / name for name in parts if os.path.lexists(models_dir / name)]


def _users(paths: list[Path], loaded: dict[str, Path]) -> list[str]:
    """The loaded models that run from one of `paths` or from inside one (symlinks followed on both sides)."""
    real = [Path(os.path.realpath(p)) for p in paths]
    users = []
    for model_id, path in loaded.items():
        used = Path(os.path.realpath(path))
        if any(used == r or used.is_relative_to(r) for r in real):
            users.append(model_id)
    return sorted(users)


def _bytes(path: Path) -> int:
    """What deleting `path` frees: nothing for a symlink, whose target stays."""
    if path.is_symlink():
        return 0
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.lstat().st_size


def _forget(models_dir: Path, names: set[str]) -> None:
    index_path = models_dir / STAGING / INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return
    kept = {source: name for source, name in index.items() if name not in names}
    write_atomic(index_path, json.dumps(kept, indent=1, sort_keys=True))
