"""The node protocol: what the neuron's lifecycle API takes and answers, as types.

The neuron builds its answers from these and the gateway and the CLI read them
back with `from_dict`, so neither side handles raw dicts or spells a model's
state as a string. Requests validate strictly (errors name the field); answers
read leniently (a newer neuron may add fields). Free of heavy imports: the
gateway imports this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Self

from neuron.shared.backend_names import BACKENDS, EXTERNAL_ENGINES
from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_bool, opt_float, opt_int, req_str, require_object, require_type
from neuron.shared.launch_flags import check_engine_args
from neuron.shared.speculative import SpecConfig

MAX_ENGINE_ARGS = 64


class ModelState(StrEnum):
    """Where a model is in its lifecycle on one node (see neuron.engine.registry)."""

    LOADING = "loading"
    LOADED = "loaded"
    POISONED = "poisoned"
    RECOVERING = "recovering"
    UNLOADING = "unloading"

    @property
    def pending(self) -> bool:
        """A load is under way: it will be loaded (or gone) soon, so wait rather than load again."""
        return self in (ModelState.LOADING, ModelState.RECOVERING)


class ModelKind(StrEnum):
    """What a model does, read from its folder or GGUF metadata (neuron.server.catalog); which routes
    each kind serves is `neuron.shared.kinds`. A kind this version does not know reads as generation, the
    kind every node had before kinds were told apart, so an older gateway still parses a newer node."""

    GENERATION = "generation"  # chat and completions; it can embed too
    EMBEDDING = "embedding"
    RERANK = "rerank"  # a cross-encoder: scores (query, document) pairs
    IMAGE = "image"  # text to image
    VISION = "vision"  # chat with images in the messages
    TRANSCRIPTION = "transcription"  # speech to text


class _Answer:
    """A wire answer: built from a dict leniently (fields this version does not know are ignored,
    since a newer neuron may add some), sent as `asdict`."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            data = {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


# A load's own admission overrides; neuron.toml's [admission] defaults take the same bounds
# (neuron.shared.config), so a default is never one a load could not ask for.
ADMISSION_LIMITS = {"max_in_flight": {"minimum": 1, "maximum": 4096},
                    "max_queue_depth": {"minimum": 0, "maximum": 1 << 16},
                    "max_wait_s": {"minimum": 0, "maximum": 3600}}

# Who an inference request is for, sent by the gateway (never taken from its client): the neuron's waiting
# queue serves higher priority first and rotates between tenants within one (neuron.engine.queue_order).
# Absent: normal priority, and one anonymous tenant. The tenant is the key's name, percent-encoded.
PRIORITY_HEADER = "X-Cortex-Priority"
TENANT_HEADER = "X-Cortex-Tenant"
PRIORITIES = ("high", "normal", "low")


@dataclass
class LoadRequest:
    """POST /models/load: everything but `model` is optional."""

    model: str
    backend: str = "auto"
    devices: list[str] = field(default_factory=list)
    context_size: int | None = None
    parallel: int | None = None  # decoding slots; None: the backend's default for the device
    max_in_flight: int | None = None
    max_queue_depth: int | None = None
    max_wait_s: float | None = None
    engine_args: list[str] = field(default_factory=list)  # passed to an external engine's command line
    speculative: SpecConfig | None = None  # the model's own drafts (prompt lookup); predictions need none

    @classmethod
    def from_dict(cls, body: Any) -> LoadRequest:
        data = require_object(body)
        backend = data.get("backend") or "auto"
        if backend not in BACKENDS:
            raise bad_request(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}", param="backend")
        return cls(
            model=req_str(data, "model"),
            backend=backend,
            devices=parse_devices(data.get("devices")),
            context_size=opt_int(data, "context_size", minimum=16, maximum=1 << 22),
            parallel=opt_int(data, "parallel", minimum=1, maximum=256),
            max_in_flight=opt_int(data, "max_in_flight", **ADMISSION_LIMITS["max_in_flight"]),
            max_queue_depth=opt_int(data, "max_queue_depth", **ADMISSION_LIMITS["max_queue_depth"]),
            max_wait_s=opt_float(data, "max_wait_s", **ADMISSION_LIMITS["max_wait_s"]),
            engine_args=_engine_args(data.get("engine_args"), backend),
            speculative=SpecConfig.from_dict(data.get("speculative")),
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "engine_args" and not v)}


def _engine_args(value: Any, backend: str) -> list[str]:
    if value is None or value == []:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 4096 for v in value) \
            or len(value) > MAX_ENGINE_ARGS:
        raise bad_request(f"engine_args: expected a list of at most {MAX_ENGINE_ARGS} strings", param="engine_args")
    if backend not in EXTERNAL_ENGINES:
        raise bad_request(f"engine_args: only for an external engine backend ({', '.join(EXTERNAL_ENGINES)}), not "
                          f"{backend}", param="engine_args")
    check_engine_args(backend, value)  # the neuron's own flags (host, model, files, ...) are refused by name
    return list(value)


def parse_devices(value: Any) -> list[str]:
    """Devices as GPU indices (0, "1", "cuda:1") or "cpu"; normalised to "cuda:N" / "cpu"."""
    if value is None:
        return []
    require_type(value, list, "devices", "a list of device indices or ids")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise bad_request(f"devices[{i}]: expected a GPU index or 'cpu'", param="devices")
        device = normalise_device_id(item, f"devices[{i}]")
        if device not in out:  # ["cpu", "cpu"] is one device, not two budgets
            out.append(device)
    return out


def normalise_device_id(item: int | str, where: str = "device") -> str:
    text = str(item).strip().lower()
    if text == "cpu":
        return "cpu"
    text = text.removeprefix("cuda:").removeprefix("gpu")
    if not text.isdigit():
        raise bad_request(f"{where}: expected a GPU index (0, 1, cuda:1) or 'cpu', got {item!r}", param="devices")
    return f"cuda:{int(text)}"


@dataclass
class UnloadRequest:
    """POST /models/unload. With `if_idle`, a model with requests in flight or queued is refused
    (409 model_busy) instead of drained: the gateway's evictor asks this way, so the neuron, which
    alone knows every request, decides whether a model is busy at the moment it matters."""

    model: str
    if_idle: bool = False

    @classmethod
    def from_dict(cls, body: Any) -> UnloadRequest:
        data = require_object(body)
        return cls(model=req_str(data, "model"), if_idle=opt_bool(data, "if_idle"))


@dataclass
class ModelInfo(_Answer):
    """One model loaded on a node: an entry of GET /models, and the answer of POST /models/load."""

    id: str
    backend: str = ""
    status: ModelState = ModelState.LOADED
    devices: list[str] = field(default_factory=list)
    memory_mb: float = 0.0
    context_size: int = 0
    path: str = ""
    load_time_s: float | None = None
    spec: dict | None = None
    phase: str = ""
    estimated_mb: float | None = None
    kind: ModelKind = ModelKind.GENERATION

    def __post_init__(self):
        self.status = ModelState(self.status)
        self.kind = ModelKind(self.kind) if self.kind in tuple(ModelKind) else ModelKind.GENERATION

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "load_time_s"}


@dataclass
class AvailableModel(_Answer):
    """A model the node can load from its models directory: an entry of GET /models/available."""

    id: str
    format: str = ""
    path: str = ""
    size_mb: float = 0.0
    estimated_mb: float = 0.0
    kind: ModelKind = ModelKind.GENERATION

    def __post_init__(self):
        self.kind = ModelKind(self.kind) if self.kind in tuple(ModelKind) else ModelKind.GENERATION

    @property
    def need_mb(self) -> float:
        return self.estimated_mb or self.size_mb


@dataclass
class DeviceInfo(_Answer):
    """One device of a node, as GET /health reports it."""

    id: str  # "cuda:N" or "cpu"
    kind: str = "cpu"  # "cuda" | "cpu"
    index: int = 0
    name: str = ""
    total_mb: float = 0.0
    free_mb: float = 0.0
    used_mb: float = 0.0
    utilization: float | None = None
    temperature: float | None = None


@dataclass
class ModelLoad(_Answer):
    """How busy one loaded model is right now, as GET /health reports it."""

    id: str
    status: ModelState = ModelState.LOADED
    in_flight: int = 0
    queue_depth: int = 0
    decode_tps: float = 0.0
    memory_mb: float = 0.0
    running: int = 0  # sequences in the batch now (batching backends)
    slots: int = 0  # sequences the batch can hold; 0 for a backend that does not batch
    step: int = 0  # an image model: steps done of the job it draws now (0 with steps 0: none running)
    steps: int = 0
    drafted: int = 0  # speculative decoding: draft tokens verified since the load
    draft_accepted: int = 0  # and kept (`cortex top` shows the ratio)

    def __post_init__(self):
        self.status = ModelState(self.status)


@dataclass
class Health(_Answer):
    """GET /health: the node, its devices and the load on each model."""

    status: str = "ok"
    name: str = ""
    uptime_s: float = 0.0
    devices: list[DeviceInfo] = field(default_factory=list)
    models: list[ModelLoad] = field(default_factory=list)
    # The ETags GET /models and GET /models/available answer with now: a poller that holds both asks for
    # neither until one changes. Empty from a neuron older than them (ask every time).
    models_etag: str = ""
    available_etag: str = ""

    @property
    def free_mb(self) -> float:
        return sum(d.free_mb for d in self.devices)

    def load_of(self, model: str) -> ModelLoad | None:
        return next((m for m in self.models if m.id == model), None)

    @classmethod
    def from_dict(cls, data: Any) -> Health:
        health = super().from_dict(data)
        health.devices = [DeviceInfo.from_dict(d) for d in health.devices or []]
        health.models = [ModelLoad.from_dict(m) for m in health.models or []]
        return health


class PullPhase(StrEnum):
    """Where a pull from the hub is (see neuron.pulls.puller)."""

    CHECKING = "checking"  # reading the hub's metadata; refusing what cannot fit before a byte
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"  # sha256 of every LFS file against the hub's
    DONE = "done"
    FAILED = "failed"


@dataclass
class PullState(_Answer):
    """One pull of a model from the hub: an entry of GET /models/pulls (and of /models' `pulls`)."""

    source: str
    phase: PullPhase = PullPhase.CHECKING
    id: str = ""  # the model's id on this node once known
    done_bytes: int = 0
    total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0
    rate_bps: float = 0.0
    eta_s: float | None = None
    error: str | None = None

    def __post_init__(self):
        self.phase = PullPhase(self.phase) if self.phase in tuple(PullPhase) else PullPhase.CHECKING

    @property
    def finished(self) -> bool:
        return self.phase in (PullPhase.DONE, PullPhase.FAILED)


@dataclass
class PullRequest:
    """POST /models/pull: start (or join) a pull; `wait` answers when it ends instead of at once."""

    source: str
    wait: bool = False

    @classmethod
    def from_dict(cls, body: Any) -> Self:
        data = require_object(body)
        wait = data.get("wait", False)
        return cls(req_str(data, "source"), require_type(wait, bool, "wait", "true or false"))
