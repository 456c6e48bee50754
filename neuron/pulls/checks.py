"""What a pull refuses before a byte of weights moves: a model the disk cannot hold, or no device could load.

A user must never wait for 40 GB to learn the model could never load. The
sizes come from the hub's file list; the memory a load needs is the same
estimate the registry makes before a load (weights, grown to float32 on a
CPU, plus a context of KV cache per slot), from the model's config.json (read
first) or, for a GGUF, from its files' size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from neuron.pulls.sources import HubSource, RemoteFile
from neuron.server.catalog import ModelRef, estimate_mb
from neuron.shared.errors import ApiError

DISK_MARGIN = 1.02  # a little room beyond the files themselves (metadata, the filesystem's own)


def check_disk(models_dir: Path, needed_bytes: int) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(models_dir).free
    if needed_bytes * DISK_MARGIN > free:
        raise ApiError(507, "insufficient_storage", f"the models disk has {free / 2**30:.2f} GiB free; this pull "
                       f"needs {needed_bytes / 2**30:.2f} GiB more. Free space with `cortex rm NODE MODEL`, or "
                       "point --models-dir at a larger disk", code="insufficient_storage", param="source")


def needed_mb(source: HubSource, files: list[RemoteFile], config: dict, on_cpu: bool) -> float:
    weights_mb = sum(f.size for f in files if _is_weights(f.path)) / 2**20
    if source.is_gguf:
        ref = ModelRef("pull", "gguf", "", weights_mb)  # no header yet: weights and overhead
        return estimate_mb(ref, None, on_cpu, 1)
    ref = ModelRef("pull", "hf", "", weights_mb, remote=True)
    return estimate_mb(ref, None, on_cpu, 1, config=config)


def check_fits(source: HubSource, files: list[RemoteFile], config: dict, devices, on_cpu: bool) -> None:
    """The model must fit the node's largest device (or all of them, split): other models can be evicted."""
    need = needed_mb(source, files, config, on_cpu)
    snapshot = devices.snapshot()
    biggest = max((d.total_mb for d in snapshot), default=0.0)
    together = sum(d.total_mb for d in snapshot if d.kind == "cuda") or biggest
    if need > max(biggest, together):
        raise ApiError(507, "insufficient_memory", f"{source} needs about {need:.0f} MiB to load (one slot); this "
                       f"node's largest device has {biggest:.0f} MiB{_all(snapshot, together)}, so it could never "
                       "load here. Pull a smaller quantisation or pull it onto a bigger node",
                       code="insufficient_memory", param="source")


def _all(snapshot, together: float) -> str:
    gpus = [d for d in snapshot if d.kind == "cuda"]
    return f" and its {len(gpus)} GPUs {together:.0f} MiB together" if len(gpus) > 1 else ""


def _is_weights(path: str) -> bool:
    return path.endswith((".safetensors", ".gguf", ".bin"))
