"""The models on this node and their lifecycle.

State machine: (absent) -> loading -> loaded -> unloading -> (absent), and
loaded -> poisoned -> recovering -> loaded | (absent). Every transition happens
on the event loop inside this class, so callers cannot race: a second load of
the same model joins the first (single-flight), and a failed reload leaves the
model unloaded rather than poisoned forever.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neuron.engine.admission import Admission
from neuron.engine.backends import Backend, BackendSpec, BackendUnavailable, backend_class, choose_backend
from neuron.engine.faults import FaultInjector
from neuron.engine.load_checks import check_same_backend, check_same_context
from neuron.engine.speculative_load import plan_speculative
from neuron.engine.worker import DeviceWorker
from neuron.server.catalog import ModelRef, estimate_mb, resolve
from neuron.server.devices import DeviceTable, process_rss_mb
from neuron.shared.config import AdmissionLimits
from neuron.shared.errors import ApiError
from neuron.shared.kinds import wrong_kind
from neuron.shared.protocol import EXTERNAL_ENGINES, LoadRequest, ModelInfo, ModelState

log = logging.getLogger("cortex.neuron.engine.registry")
UNLOAD_DRAIN_S = 30.0
MAX_FAILURES = 64


@dataclass
class ModelEntry:
    id: str
    request: LoadRequest
    ref: ModelRef
    backend_name: str
    devices: list[str]
    status: ModelState = ModelState.LOADING
    backend: Backend | None = None
    memory_mb: float = 0.0
    estimated_mb: float = 0.0
    load_time_s: float | None = None
    admission: Admission | None = None
    decode_tps: float = 0.0
    phase: str = "queued"  # what a load is doing now, for progress displays
    ready: asyncio.Future | None = field(default=None, repr=False)
    watcher: asyncio.Task | None = field(default=None, repr=False)  # an external engine's exit watch
    load_error: ApiError | None = field(default=None, repr=False)
    draft_path: Path | None = None  # speculative decoding's draft model (neuron.engine.speculative_load)

    @property
    def on_engine(self) -> bool:
        """Served by an external engine process the neuron started, not by an in-process backend."""
        return self.backend_name in EXTERNAL_ENGINES

    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self.id, backend=self.backend_name, status=self.status, devices=self.devices,
            memory_mb=round(self.memory_mb, 1),
            context_size=self.backend.context_size if self.backend else (self.request.context_size or 0),
            path=self.ref.shown_path, load_time_s=self.load_time_s, spec=self.request.to_dict(), phase=self.phase,
            estimated_mb=round(self.estimated_mb, 1), kind=self.ref.kind,
        )

    def record_decode_rate(self, tokens: int, seconds: float) -> None:
        if tokens > 1 and seconds > 0:
            rate = (tokens - 1) / seconds
            self.decode_tps = rate if not self.decode_tps else 0.7 * self.decode_tps + 0.3 * rate


class Registry:
    def __init__(self, devices: DeviceTable, models_dir: Path, faults: FaultInjector,
                 default_limits: AdmissionLimits, model_roots: tuple[Path, ...] = ()):
        self.devices = devices
        self.models_dir = models_dir
        self.model_roots = model_roots
        self.faults = faults
        self.default_limits = default_limits
        self.workers = {d: DeviceWorker(d) for d in devices.ids}
        self.models: dict[str, ModelEntry] = {}
        self.failures: dict[str, str] = {}  # last failed load or recovery, by model id; the newest MAX_FAILURES
        # For the metrics, by model id, kept past an unload (counters never go back): inferences that hit a
        # device error, and recoveries by outcome ("reloaded" or "failed", the model left unloaded).
        self.device_faults: collections.Counter[str] = collections.Counter()
        self.recoveries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on_loaded: Callable[[ModelEntry], None] = lambda entry: None  # once per real load
        self.puller = None  # neuron.pulls.Puller: a load of a hub source pulls it first
        self.engines: dict[str, list[str]] = {}  # configured external engine commands, by name
        self.engine_start_timeout_s = 900.0

    # -- queries -------------------------------------------------------------
    def worker_for(self, entry: ModelEntry) -> DeviceWorker:
        return self.workers[entry.devices[0]]

    def require_loaded(self, model_id: str, path: str = "/v1/chat/completions") -> ModelEntry:
        """The loaded model, or the error a client should see: a model of a kind that does not serve
        `path` (a chat for a reranker) is a 400 (`neuron.shared.kinds`)."""
        entry = self.models.get(model_id)
        if entry is None:
            raise ApiError(404, "invalid_request_error",  # OpenAI's type for an unknown model
                           f"model {model_id!r} is not loaded on this node; POST /models/load first",
                           code="model_not_found", param="model")
        if refused := wrong_kind(model_id, entry.ref.kind, path):
            raise refused
        if entry.status in (ModelState.POISONED, ModelState.RECOVERING):
            raise ApiError(503, "overloaded_error", f"model {model_id!r} hit a device error and is being "
                           "reloaded; retry shortly", code="model_recovering", retry_after=5)
        if entry.status != ModelState.LOADED:
            raise ApiError(503, "overloaded_error", f"model {model_id!r} is {entry.status}; retry shortly",
                           code=f"model_{entry.status}", retry_after=2)
        return entry

    # -- load ------------------------------------------------------------------
    async def load(self, req: LoadRequest) -> ModelEntry:
        ref = await self._local_ref(req.model)
        existing = self.models.get(ref.id)
        if existing is not None:
            check_same_backend(existing, req)
            if existing.ready is not None and not existing.ready.done():
                await asyncio.shield(existing.ready)  # single-flight: join the load in progress
                if existing.load_error is not None:
                    raise existing.load_error  # every joiner gets the load's own error
            check_same_context(existing, req)
            return existing
        entry = self._plan(req, ref)
        self.models[entry.id] = entry
        entry.ready = asyncio.get_running_loop().create_future()
        try:
            await self._open(entry)
        except BaseException as exc:
            self.models.pop(entry.id, None)
            entry.load_error = exc if isinstance(exc, ApiError) else ApiError(
                500, "server_error", f"loading {entry.id!r} was interrupted", code="load_interrupted")
            self._record_failure(entry.id, str(exc))
            entry.ready.set_result(None)
            raise
        entry.ready.set_result(None)
        self.failures.pop(entry.id, None)
        return entry

    async def _local_ref(self, name: str) -> ModelRef:
        """What `name` is on this disk; a hub source not pulled yet is pulled first (single-flight)."""
        ref = resolve(name, self.models_dir, self.model_roots)
        if not ref.remote:
            return ref
        if self.puller is None:
            raise ApiError(400, "invalid_request_error", f"{name!r} is a hub source and this node pulls nothing; "
                           "copy the model into its models directory", code="pulls_disabled", param="model")
        local = self.puller.pulled_id(name) or await self.puller.pull(name)
        return resolve(local, self.models_dir, self.model_roots)

    def _record_failure(self, model_id: str, message: str) -> None:
        """Keep the newest MAX_FAILURES: a client sending bad loads must not grow /models forever."""
        self.failures.pop(model_id, None)
        self.failures[model_id] = self.redact(message)[:500]
        while len(self.failures) > MAX_FAILURES:
            self.failures.pop(next(iter(self.failures)))

    def redact(self, text: str) -> str:
        """Show paths relative to their root: clients never see where the node keeps its files."""
        labels = [(self.models_dir, "<models>"), *((r, f"<root{i}>") for i, r in enumerate(self.model_roots))]
        for root, label in labels:
            for form in {str(root), str(root.resolve())}:
                text = text.replace(form, label)
        return text

    def _plan(self, req: LoadRequest, ref: ModelRef) -> ModelEntry:
        backend_name = choose_backend(req.backend, ref.format)
        devices = self._choose_devices(req.devices)
        draft, draft_mb = plan_speculative(req, backend_name, self.models_dir, self.model_roots, devices == ["cpu"])
        entry = ModelEntry(ref.id, req, ref, backend_name, devices, draft_path=draft)
        entry.estimated_mb = estimate_mb(ref, req.context_size, devices == ["cpu"], req.parallel) + draft_mb
        self._check_fits(entry)
        return entry

    def _choose_devices(self, wanted: list[str]) -> list[str]:
        owned = self.devices.ids
        unknown = [d for d in wanted if d not in owned]
        if unknown:
            raise ApiError(400, "invalid_request_error",
                           f"devices: this node owns {', '.join(owned)}; not {', '.join(unknown)}",
                           code="unknown_device", param="devices")
        if wanted:
            return wanted
        # One device by default: the one with the most free memory.
        return [max(owned, key=self.devices.free_mb)]

    def _check_fits(self, entry: ModelEntry) -> None:
        free = sum(self.devices.free_mb(d) for d in entry.devices)
        free -= sum(m.estimated_mb for m in self.models.values()
                    if m.status == ModelState.LOADING and set(m.devices) & set(entry.devices))
        if entry.estimated_mb > free:
            raise ApiError(507, "insufficient_memory",
                           f"model {entry.id!r} needs about {entry.estimated_mb:.0f} MiB on "
                           f"{', '.join(entry.devices)} but {max(free, 0):.0f} MiB is free; unload a model "
                           "or choose other devices", code="insufficient_memory")

    async def _open(self, entry: ModelEntry) -> None:
        spec = _backend_spec(entry)
        started = time.monotonic()
        log.info("loading %s with %s on %s (about %.0f MiB)", entry.id, entry.backend_name,
                 ",".join(entry.devices), entry.estimated_mb)
        try:
            if entry.on_engine:
                backend, measured = await self._open_engine(entry, spec)
            else:
                backend, measured = await self.worker_for(entry).call(lambda: self._open_on_device(entry, spec))
        except BackendUnavailable as exc:
            raise ApiError(400, "invalid_request_error", str(exc), code="backend_unavailable") from exc
        except ApiError:
            raise
        except Exception as exc:
            log.exception("load of %s failed", entry.id)
            if _out_of_memory(exc):  # passes once memory is freed: the gateway evicts and retries on this code
                raise ApiError(507, "insufficient_memory", f"loading {entry.id!r} ran out of memory on "
                               f"{', '.join(entry.devices)}; unload a model or choose other devices",
                               code="insufficient_memory") from exc
            # The backend could not read the model (not a model, corrupt, an architecture it does not
            # know): the same load fails again, and the gateway stops retrying it on this code.
            raise ApiError(422, "invalid_request_error", f"loading {entry.id!r} failed: {self.redact(str(exc))}",
                           code="load_failed") from exc
        entry.backend = backend
        if entry.on_engine:  # measured, not estimated: the engine's own processes
            entry.memory_mb = measured
            entry.watcher = asyncio.get_running_loop().create_task(self._watch_engine(entry, backend))
        else:
            entry.memory_mb = measured if measured >= 0.5 * entry.estimated_mb else entry.estimated_mb
        entry.load_time_s = round(time.monotonic() - started, 3)
        entry.admission = Admission(entry.id, self._limits(entry))
        entry.status, entry.phase = ModelState.LOADED, "ready"
        self._account(entry, +1)
        self.on_loaded(entry)
        log.info("loaded %s in %.2fs, %.0f MiB", entry.id, entry.load_time_s, entry.memory_mb)

    async def _open_engine(self, entry: ModelEntry, spec: BackendSpec):
        """An external engine, started on the event loop's thread (its death signal follows that thread)."""
        from neuron.engine.external.backend import start_engine

        def phase(text: str) -> None:
            entry.phase = text

        engine = await start_engine(entry.backend_name, spec, entry.id,
                                    configured=self.engines.get(entry.backend_name),
                                    engine_args=entry.request.engine_args, log_dir=self.models_dir / ".engines",
                                    start_timeout_s=self.engine_start_timeout_s, on_phase=phase,
                                    redact=self.redact)
        entry.phase = "measuring memory"
        measured = await asyncio.get_running_loop().run_in_executor(None, engine.memory_mb, self.devices.nvml)
        return engine, measured

    async def _watch_engine(self, entry: ModelEntry, engine) -> None:
        from neuron.engine.external.backend import watch
        from neuron.engine.generation import DeviceFault

        def died(reason: str) -> None:
            if entry.backend is engine and entry.status == ModelState.LOADED:
                self.poison(entry, DeviceFault(reason))

        await watch(engine, died)

    def _open_on_device(self, entry: ModelEntry, spec: BackendSpec) -> tuple[Backend, float]:
        entry.phase = f"importing {entry.backend_name}"
        cls = backend_class(entry.backend_name, entry.ref.kind)
        before = _memory_probe(self.devices, entry.devices)
        entry.phase = f"reading {entry.ref.size_mb:.0f} MiB of weights onto {', '.join(entry.devices)}"
        if slow := self.faults.take(entry.id, "slow_load"):
            time.sleep(slow.delay_ms / 1000)
        backend = cls(spec)
        if self.faults.take(entry.id, "load_error"):
            backend.close()
            raise RuntimeError("injected load failure (CORTEX_FAULT_INJECTION)")
        entry.phase = "measuring memory"
        return backend, _memory_probe(self.devices, entry.devices) - before

    def _limits(self, entry: ModelEntry) -> AdmissionLimits:
        req, d = entry.request, self.default_limits
        slots = entry.backend.slots
        if slots:  # as many run as the batch has slots, the rest queue here
            in_flight = min(req.max_in_flight or slots, slots)
        else:
            in_flight = req.max_in_flight or max(d.max_in_flight, req.parallel or 1)
        return AdmissionLimits(
            max_in_flight=in_flight,
            max_queue_depth=d.max_queue_depth if req.max_queue_depth is None else req.max_queue_depth,
            max_wait_s=d.max_wait_s if req.max_wait_s is None else req.max_wait_s,
        )

    def _account(self, entry: ModelEntry, sign: int) -> None:
        if "cpu" in entry.devices:
            self.devices.cpu_used_mb = max(0.0, self.devices.cpu_used_mb + sign * entry.memory_mb)

    # -- unload and recovery -------------------------------------------------------
    async def unload(self, model_id: str, *, if_idle: bool = False) -> ModelEntry:
        """Drain and free a model; with `if_idle`, refuse one that has requests in flight or queued.

        The check and the state change happen with no await between them, so no request can be
        admitted to a model the gateway is evicting as idle."""
        entry = self.models.get(model_id)
        if entry is None:
            raise ApiError(404, "not_found_error", f"model {model_id!r} is not loaded on this node",
                           code="model_not_found", param="model")
        if entry.status.pending:
            raise ApiError(409, "invalid_request_error", f"model {model_id!r} is {entry.status}; "
                           "unload it once that finishes", code=f"model_{entry.status}", retry_after=2)
        if entry.status == ModelState.UNLOADING:
            return entry
        if if_idle and entry.admission and (entry.admission.in_flight or entry.admission.queue_depth):
            raise ApiError(409, "invalid_request_error", f"model {model_id!r} has requests in flight or queued; "
                           "not unloaded", code="model_busy", retry_after=1)
        entry.status = ModelState.UNLOADING
        await self._drain(entry)
        await self._close(entry)
        self.models.pop(model_id, None)
        return entry

    async def _drain(self, entry: ModelEntry) -> None:
        deadline = time.monotonic() + UNLOAD_DRAIN_S
        while entry.admission and entry.admission.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _close(self, entry: ModelEntry) -> None:
        backend, entry.backend = entry.backend, None
        if entry.watcher is not None:
            entry.watcher.cancel()
            entry.watcher = None
        if backend is not None and entry.on_engine:  # a process to stop, not a device job
            await asyncio.get_running_loop().run_in_executor(None, backend.close)
        elif backend is not None:
            try:
                await self.worker_for(entry).call(backend.close)
            except Exception:  # noqa: BLE001 - a broken device may fail to free; we drop it anyway
                log.exception("closing %s failed", entry.id)
        self._account(entry, -1)
        entry.memory_mb = 0.0

    def poison(self, entry: ModelEntry, exc: BaseException) -> None:
        """Mark a model that hit a device error and start reloading it in the background."""
        self.device_faults[entry.id] += 1
        if entry.status != ModelState.LOADED:
            return
        log.error("device error on %s: %s; reloading it", entry.id, exc)
        entry.status = ModelState.POISONED
        asyncio.get_running_loop().create_task(self._recover(entry))

    async def _recover(self, entry: ModelEntry) -> None:
        entry.status = ModelState.RECOVERING
        await self._drain(entry)
        await self._close(entry)
        try:
            await self._open(entry)
        except Exception as exc:  # noqa: BLE001 - recorded; the model is left unloaded
            log.error("reload of %s failed: %s; it is now unloaded", entry.id, exc)
            self._record_failure(entry.id, f"recovery failed: {exc}")
            self.models.pop(entry.id, None)
            self.recoveries[(entry.id, "failed")] += 1
        else:
            self.recoveries[(entry.id, "reloaded")] += 1

    async def close(self) -> None:
        for model_id in list(self.models):
            entry = self.models[model_id]
            if entry.backend is not None:
                await self._close(entry)
            self.models.pop(model_id, None)
        for worker in self.workers.values():
            worker.stop()


def _backend_spec(entry: ModelEntry) -> BackendSpec:
    path, gguf_file = Path(entry.ref.path), None
    if entry.backend_name == "torch" and entry.ref.format == "gguf":
        path, gguf_file = path.parent, path.name
    return BackendSpec(path=path, format=entry.ref.format, devices=entry.devices,
                       context_size=entry.request.context_size, parallel=entry.request.parallel,
                       gguf_file=gguf_file, speculative=entry.request.speculative, draft_path=entry.draft_path)


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (named, not imported: torch stays out of this module)."""
    return isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__)


def _memory_probe(devices: DeviceTable, ids: list[str]) -> float:
    """MiB in use now: process RSS for the CPU, NVML used memory for GPUs."""
    if ids == ["cpu"]:
        return process_rss_mb()
    return sum(d.used_mb for d in devices.snapshot() if d.id in ids)
