"""The node protocol: request and response shapes of the neuron's lifecycle API.

The gateway and the CLI import these, so this module stays free of heavy imports.
Validation raises `ApiError`s that name the offending field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from neuron.errors import bad_request

BACKENDS = ("auto", "torch", "llama.cpp")
MODEL_STATES = ("loading", "loaded", "poisoned", "recovering", "unloading")


def _require_type(value: Any, kind: type | tuple, field_name: str, expected: str) -> Any:
    # bool is an int in Python; a JSON `true` is never a valid count.
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise bad_request(f"{field_name}: expected {expected}, got a boolean", param=field_name)
    if not isinstance(value, kind):
        raise bad_request(f"{field_name}: expected {expected}, got {type(value).__name__}", param=field_name)
    return value


def opt_int(data: dict, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """An optional integer field, range-checked, with an error naming the field."""
    value = data.get(key)
    if value is None:
        return None
    _require_type(value, int, key, "an integer")
    if minimum is not None and value < minimum:
        raise bad_request(f"{key}: must be >= {minimum}, got {value}", param=key)
    if maximum is not None and value > maximum:
        raise bad_request(f"{key}: must be <= {maximum}, got {value}", param=key)
    return value


def opt_float(data: dict, key: str, *, minimum: float | None = None, maximum: float | None = None) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    _require_type(value, (int, float), key, "a number")
    if minimum is not None and value < minimum:
        raise bad_request(f"{key}: must be >= {minimum}, got {value}", param=key)
    if maximum is not None and value > maximum:
        raise bad_request(f"{key}: must be <= {maximum}, got {value}", param=key)
    return float(value)


def req_str(data: dict, key: str) -> str:
    if key not in data or data[key] is None:
        raise bad_request(f"{key}: required", param=key, code="missing_field")
    value = _require_type(data[key], str, key, "a string")
    if not value.strip():
        raise bad_request(f"{key}: must not be empty", param=key)
    return value


def require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request("request body: expected a JSON object", code="invalid_body")
    return body


@dataclass
class LoadRequest:
    """POST /models/load: everything but `model` is optional."""

    model: str
    backend: str = "auto"
    devices: list[str] = field(default_factory=list)
    context_size: int | None = None
    parallel: int = 1
    max_in_flight: int | None = None
    max_queue_depth: int | None = None
    max_wait_s: float | None = None

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
            parallel=opt_int(data, "parallel", minimum=1, maximum=256) or 1,
            max_in_flight=opt_int(data, "max_in_flight", minimum=1, maximum=4096),
            max_queue_depth=opt_int(data, "max_queue_depth", minimum=0, maximum=1 << 16),
            max_wait_s=opt_float(data, "max_wait_s", minimum=0, maximum=3600),
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_devices(value: Any) -> list[str]:
    """Devices as GPU indices (0, "1", "cuda:1") or "cpu"; normalised to "cuda:N" / "cpu"."""
    if value is None:
        return []
    _require_type(value, list, "devices", "a list of device indices or ids")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise bad_request(f"devices[{i}]: expected a GPU index or 'cpu'", param="devices")
        out.append(normalise_device_id(item, f"devices[{i}]"))
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
    model: str

    @classmethod
    def from_dict(cls, body: Any) -> UnloadRequest:
        return cls(model=req_str(require_object(body), "model"))


@dataclass
class ModelInfo:
    """One entry of GET /models."""

    id: str
    backend: str
    status: str
    devices: list[str]
    memory_mb: float
    context_size: int
    path: str = ""
    load_time_s: float | None = None
    spec: dict | None = None
    phase: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
