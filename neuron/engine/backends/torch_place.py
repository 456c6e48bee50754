"""Where a torch model of one load runs: torch and transformers imported, its GPUs, its device.

Every torch backend (chat, embedding, rerank, transcription, images, vision) starts the same way, and
the CPU case carries a rule easy to forget in a copy: leave a core to the event loop, since intra-op
threads spinning on every core starve the server that streams the answers (llama.cpp's default does the
same). So it is written once, here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from neuron.engine.backends.base import BackendSpec, BackendUnavailable, gpu_indices


def _import_torch():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendUnavailable(
            "the torch backend needs torch and transformers: pip install 'cortex-fleet[torch]'") from exc
    return torch, transformers


def _placement_kwargs(torch, gpus: list[int]) -> dict:
    if not gpus:
        return {"dtype": torch.float32, "device_map": {"": "cpu"}}
    if len(gpus) == 1:
        return {"dtype": "auto", "device_map": {"": f"cuda:{gpus[0]}"}}
    # Several GPUs: let accelerate split layers over exactly the devices we own.
    free = {i: torch.cuda.mem_get_info(i)[0] for i in gpus}
    return {"dtype": "auto", "device_map": "auto",
            "max_memory": {i: int(f * 0.9) for i, f in free.items()}}



@dataclass(frozen=True)
class TorchPlace:
    torch: Any
    transformers: Any
    gpus: list[int]
    device: Any  # torch.device: the first GPU of the load, or the CPU

    def load_kwargs(self) -> dict:
        """`from_pretrained`'s dtype and device_map for these devices (several GPUs: split by accelerate)."""
        return _placement_kwargs(self.torch, self.gpus)


def torch_place(spec: BackendSpec) -> TorchPlace:
    torch, transformers = _import_torch()
    gpus = gpu_indices(spec.devices)
    if not gpus:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    return TorchPlace(torch, transformers, gpus, torch.device(f"cuda:{gpus[0]}" if gpus else "cpu"))
