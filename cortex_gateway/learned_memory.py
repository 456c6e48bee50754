"""What a model measured once loaded, kept to place it next time instead of the node's guess.

A node's `need_mb` for a model on its disk is an estimate made before any load, and it can be far off
either way (a tiny torch model: estimated 36.5 MiB, measured 109.3). Once the model has been loaded
anywhere, the memory the node measured replaces the estimate for later placements of the same load:
the same model, backend, context size and slot count asked for, on the same kind of device. The figures
are kept in one JSON file under the gateway's state dir, so a restart does not forget them.

`LearnedMemory` is pure (figures in, a figure out); `LearnedMemoryStore` is the edge that reads the file
at start and writes it when a figure changes (never per request).
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from neuron.shared.errors import ApiError
from neuron.shared.files import write_atomic
from neuron.shared.protocol import DeviceInfo, ModelInfo, normalise_device_id

log = logging.getLogger("cortex.gateway.learned_memory")
FILE_NAME = "model_memory.json"
MAX_ENTRIES = 10_000  # one per key; the least lately seen go first: bounded by this, not by the catalogue
MARGIN = 0.10  # a learned figure is padded by this share, and at least MARGIN_MB: a measure varies load to load
MARGIN_MB = 8.0


@dataclass(frozen=True)
class MemoryKey:
    """One kind of load: what was asked for (0 and "auto": the node's default), and where it ran."""

    model: str
    backend: str = "auto"
    context_size: int = 0
    parallel: int = 0
    device: str = "cpu"  # "cpu", a GPU's name ("NVIDIA H200"), several joined by "+"

    @classmethod
    def for_spec(cls, model: str, spec: dict, device: str) -> MemoryKey:
        """The key of a load asked for with `spec` (a /models/load body) landing on `device`."""
        return cls(model, spec.get("backend") or "auto", int(spec.get("context_size") or 0),
                   int(spec.get("parallel") or 0), device)


def device_kind(ids: list[str], devices: list[DeviceInfo]) -> str:
    """A name for the devices a model sits on that is the same on every node with that hardware.

    The CPU is "cpu" (its reported name carries a core count, which would split figures that are the
    same); a GPU is its reported name (a 24 GiB and an 80 GiB card measure alike, two different cards may
    not), or its kind when the node reports no name."""
    by_id = {d.id: d for d in devices}
    return "+".join(sorted(_device_name(i, by_id.get(i)) for i in ids)) or "cpu"


def _device_name(device_id: str, device: DeviceInfo | None) -> str:
    if device_id == "cpu" or (device is not None and device.kind == "cpu"):
        return "cpu"
    return (device.name or device.kind) if device is not None else device_id


def key_of_loaded(info: ModelInfo, devices: list[DeviceInfo]) -> MemoryKey:
    """The key a model the node reports as loaded was loaded under (its spec is the load request)."""
    return MemoryKey.for_spec(info.id, info.spec or {}, device_kind(info.devices, devices))


def key_for_placing(model: str, spec: dict, devices: list[DeviceInfo]) -> MemoryKey:
    """The key a load of `spec` on a node with `devices` will have: on the devices the spec names, else on
    the one the node picks by default (the one with the most free memory, as the neuron's registry does)."""
    wanted = [_device_id(d) for d in spec.get("devices") or []]
    if not wanted and devices:
        wanted = [max(devices, key=lambda d: d.free_mb).id]
    return MemoryKey.for_spec(model, spec, device_kind(wanted or ["cpu"], devices))


def _device_id(item: int | str) -> str:
    """A profile's device as the node will name it; one the node will refuse keeps its own spelling."""
    try:
        return normalise_device_id(item)
    except ApiError:
        return str(item)


class LearnedMemory:
    """The largest memory measured per key (a figure only grows: the safe side), at most `max_entries`."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self.figures: collections.OrderedDict[MemoryKey, float] = collections.OrderedDict()

    def record(self, key: MemoryKey, mb: float) -> bool:
        """Note a measured figure; True when it changed what is kept (and so must be written)."""
        if mb <= 0:  # not measured (still loading, or a node that reports none)
            return False
        known = self.figures.get(key)
        self.figures[key] = max(mb, known or 0.0)
        self.figures.move_to_end(key)
        while len(self.figures) > self.max_entries:
            self.figures.popitem(last=False)
        return known is None or mb > known

    def need(self, key: MemoryKey, estimate: float) -> tuple[float, str]:
        """MiB to plan for a load of `key`, and which figure that is ("estimated" or "learned").

        With nothing learned, the estimate. A learned figure is padded by the margin; when it is above
        the estimate (the estimate was short), the padded figure; when below, the padded figure or the
        estimate, whichever is smaller: a guess that was high is lowered, never under what was measured."""
        learned = self.figures.get(key)
        if learned is None:
            return estimate, "estimated"
        padded = round(learned + max(learned * MARGIN, MARGIN_MB), 1)
        if learned > estimate:
            return padded, "learned"
        return (padded, "learned") if padded < estimate else (estimate, "estimated")

    def to_json(self) -> str:
        return json.dumps({"version": 1, "figures": [{**asdict(k), "memory_mb": mb} for k, mb in self.figures.items()]},
                          indent=1)

    @classmethod
    def from_json(cls, text: str, max_entries: int = MAX_ENTRIES) -> LearnedMemory:
        """Read what `to_json` wrote; raises ValueError (or a KeyError/TypeError) on anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("figures"), list):
            raise ValueError("expected {\"version\": 1, \"figures\": [...]}")
        learned = cls(max_entries)
        for entry in data["figures"]:
            learned.record(_key_from(entry), float(entry["memory_mb"]))
        return learned


def _key_from(entry: dict) -> MemoryKey:
    values = {name: entry[name] for name in _KEY_TYPES}
    wrong = [name for name, kind in _KEY_TYPES.items() if type(values[name]) is not kind]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: wrong type in {entry!r}")
    return MemoryKey(**values)


_KEY_TYPES = {f.name: {"str": str, "int": int}[f.type] for f in fields(MemoryKey)}


class LearnedMemoryStore:
    """The figures and the file they are kept in (`path` None: kept in memory only, as in-process tests do)."""

    def __init__(self, path: Path | None = None, max_entries: int = MAX_ENTRIES):
        self.path = path
        self.learned = LearnedMemory(max_entries)
        if path is not None and path.exists():
            self.learned = self._read(path, max_entries)

    @classmethod
    def in_dir(cls, state_dir: Path) -> LearnedMemoryStore:
        return cls(state_dir / FILE_NAME)

    @staticmethod
    def _read(path: Path, max_entries: int) -> LearnedMemory:
        """The kept figures; a file that cannot be read or parsed is logged and ignored (estimates still work)."""
        try:
            learned = LearnedMemory.from_json(path.read_text(), max_entries)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the learned model memory in %s (%s); starting from the nodes' estimates",
                        path, exc)
            return LearnedMemory(max_entries)
        log.info("read %d learned model memory figures from %s", len(learned.figures), path)
        return learned

    def observe(self, key: MemoryKey, mb: float) -> None:
        """Record a measured figure, writing the file when it changed what is kept."""
        if self.learned.record(key, mb):
            log.debug("learned %s needs %.1f MiB", key, self.learned.figures[key])
            self._write()

    def need(self, key: MemoryKey, estimate: float) -> tuple[float, str]:
        return self.learned.need(key, estimate)

    def _write(self) -> None:
        """A failed write is logged, not raised: the figures still serve until the gateway stops."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, self.learned.to_json())
        except OSError as exc:
            log.warning("could not keep the learned model memory in %s: %s", self.path, exc)
