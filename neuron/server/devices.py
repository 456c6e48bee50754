"""Device discovery: NVIDIA GPUs through NVML, else one CPU device with a memory budget."""

from __future__ import annotations

import logging
import os

from neuron.shared.config_fields import StartupError
from neuron.shared.protocol import DeviceInfo

log = logging.getLogger("cortex.neuron.devices")


def available_ram_mb() -> float:
    """MemAvailable from /proc/meminfo (what the kernel could give us without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20


def process_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Nvml:
    """A thin NVML session; `available` is False on machines without the driver."""

    def __init__(self):
        self.available = False
        self.why_not = ""  # why NVML is unavailable, for the error a user sees
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.available = True
        except Exception as exc:  # noqa: BLE001 - no driver, no library: a CPU-only node
            self.why_not = f"{exc.__class__.__name__}: {exc}"
            log.info("NVML unavailable (%s); using the CPU device", exc.__class__.__name__)

    def count(self) -> int:
        return self.pynvml.nvmlDeviceGetCount() if self.available else 0

    def read(self, index: int) -> DeviceInfo:
        nv = self.pynvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        name = nv.nvmlDeviceGetName(handle)
        return DeviceInfo(
            id=f"cuda:{index}", kind="cuda", index=index,
            name=name.decode() if isinstance(name, bytes) else name,
            total_mb=mem.total / 2**20, free_mb=mem.free / 2**20, used_mb=mem.used / 2**20,
            utilization=_safe(lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu),
            temperature=_safe(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)),
        )

    def close(self) -> None:
        if self.available:
            self.pynvml.nvmlShutdown()


def _safe(read):
    try:
        return float(read())
    except Exception:  # noqa: BLE001 - some GPUs do not report every sensor
        return None


class DeviceTable:
    """The devices this daemon owns, with live memory figures.

    GPU memory is read from NVML. CPU memory is a budget (`--cpu-memory-mb`)
    minus what the models on it were measured to use, so several models can
    share RAM without the kernel's page cache confusing the accounting.
    """

    def __init__(self, gpus: list[int] | None, cpu_memory_mb: float | None):
        self.nvml = Nvml()
        count = self.nvml.count()
        wanted = list(range(count)) if gpus is None else gpus
        missing = [g for g in wanted if g >= count]
        if missing:  # asked for GPUs that are not there: say so, never fall back to the CPU silently
            if not count:
                why = f" (NVML: {self.nvml.why_not})" if self.nvml.why_not else ""
                raise StartupError(f"--gpus {','.join(map(str, gpus))}: this machine has no NVIDIA GPU that NVML can "
                                 f"see{why}; check the driver with nvidia-smi, or run without --gpus to serve on "
                                 "the CPU")
            raise StartupError(f"--gpus: this machine has {count} GPU(s) (0-{count - 1}); no GPU "
                             f"{', '.join(map(str, missing))}")
        self.gpu_indices = [g for g in wanted if g < count]
        self.cpu_budget_mb = cpu_memory_mb if cpu_memory_mb else available_ram_mb()
        self.cpu_used_mb = 0.0  # maintained by the registry

    @property
    def ids(self) -> list[str]:
        return [f"cuda:{i}" for i in self.gpu_indices] or ["cpu"]

    def snapshot(self) -> list[DeviceInfo]:
        if self.gpu_indices:
            return [self.nvml.read(i) for i in self.gpu_indices]
        return [self.cpu_device()]

    def cpu_device(self) -> DeviceInfo:
        used = self.cpu_used_mb
        return DeviceInfo(id="cpu", kind="cpu", index=0, name=f"CPU ({os.cpu_count()} cores)",
                      total_mb=round(self.cpu_budget_mb, 1), free_mb=round(max(0.0, self.cpu_budget_mb - used), 1),
                      used_mb=round(used, 1))

    def free_mb(self, device_id: str) -> float:
        if device_id == "cpu":
            return self.cpu_device().free_mb
        return self.nvml.read(int(device_id.split(":")[1])).free_mb

    def close(self) -> None:
        self.nvml.close()
