"""A model served by an external engine (llama-server, vLLM, SGLang) the neuron starts and owns.

The engine is a child process on a free loopback port, restricted to the
model's devices (CUDA_VISIBLE_DEVICES). A load completes when the engine answers
its health route; until then the load's phase says so (a vLLM start can take
minutes). A start that fails, or times out, leaves no process behind and returns
the engine's last log lines in the error, their paths shown as the neuron's own
errors show them (`redact`: `<models>/...`), any other absolute path cut to its
last part: an answer never says where the node keeps its files or software. The
whole log stays on the node. Flags are checked once more before anything starts
(`neuron.shared.launch_flags`; the load request was checked already). Once loaded, requests are relayed to it
(`neuron.engine.external.relay`) and its memory is what it really uses. An engine
that dies is a device fault: the registry poisons the model and restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from neuron.engine.backends.base import Backend, BackendSpec, gpu_indices
from neuron.engine.external.process import EngineProcess
from neuron.engine.external.specs import SPECS, EngineSpec, Launch
from neuron.server.catalog import default_context, default_parallel
from neuron.shared.connections import free_port
from neuron.shared.errors import ApiError
from neuron.shared.launch_flags import check_engine_args

log = logging.getLogger("cortex.neuron.engine.external.backend")
WATCH_S = 0.5
# The folders of an absolute path the neuron's labels did not cover ("/opt/x/lib/y.py" -> ".../y.py"); a
# URL's path ("http://h:1/health") or a label's ("<models>/m") is left alone.
_FOLDERS = re.compile(r"(?<![\w.~:/<>-])/(?:[^\s/'\"<>:]+/)+")


class ExternalEngine(Backend):
    """The neuron's view of one engine process: where it listens, what it holds, how to stop it."""

    def __init__(self, engine: EngineSpec, process: EngineProcess, launch: Launch):
        self.engine, self.process, self.port, self.model_id = engine, process, launch.port, launch.model_id
        self.name = engine.name
        self.url = f"http://127.0.0.1:{launch.port}"
        self.gpus = launch.gpus
        self.slots = launch.parallel or default_parallel(bool(launch.gpus))
        self.context_size = launch.context_size or 0

    def memory_mb(self, nvml) -> float:
        """What the engine uses now: its processes' GPU memory on a GPU, their resident memory on the CPU."""
        return self.process.gpu_mb(nvml) if self.gpus else self.process.rss_mb()

    # The engine tokenises, detokenises and decodes itself: these are never called for it.
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        raise NotImplementedError

    def detokenizer(self):
        raise NotImplementedError

    def is_end(self, token: int) -> bool:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def close(self) -> None:
        status = self.process.stop()
        log.info("stopped %s for %s (exit %s)", self.name, self.model_id, status)


async def start_engine(name: str, spec: BackendSpec, model_id: str, *, configured: list[str] | None,
                       engine_args: list[str], log_dir: Path, start_timeout_s: float, on_phase,
                       redact: Callable[[str], str] = lambda text: text) -> ExternalEngine:
    """Start `name` for the model and wait for its health route; on any failure, nothing is left running.
    `redact` is the registry's: how the neuron's own errors show its paths."""
    engine = SPECS[name]
    check_engine_args(name, engine_args)
    if spec.format not in engine.formats:
        raise ApiError(400, "invalid_request_error", f"backend {name} does not read {spec.format} models; it reads "
                       f"{', '.join(engine.formats)}", code="backend_format_mismatch", param="backend")
    base = engine.command(configured)
    port = free_port()
    gpus = gpu_indices(spec.devices)
    context = spec.context_size or (default_context(spec.path) if spec.format == "gguf" else None)
    launch = Launch(str(spec.path), model_id, port, gpus, context, spec.parallel, engine_args)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}  # "" hides every GPU on a CPU load
    process = EngineProcess(engine.argv(base, launch), env, log_dir / f"{_safe(model_id)}.{name}.log")
    try:
        await _wait_healthy(engine, process, port, start_timeout_s, on_phase, lambda: shown(process, redact))
    except BaseException:
        await asyncio.get_running_loop().run_in_executor(None, process.stop, 5.0)
        raise
    return ExternalEngine(engine, process, launch)


def shown(process: EngineProcess, redact: Callable[[str], str], n: int = 20) -> str:
    """The engine's last lines as a client may see them: no absolute path of the node's."""
    return _FOLDERS.sub(".../", redact(process.last_lines(n)))


async def _wait_healthy(engine: EngineSpec, process: EngineProcess, port: int, timeout_s: float, on_phase,
                        last_lines: Callable[[], str]) -> None:
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}{engine.health_path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            waited = time.monotonic() - started
            on_phase(f"starting {engine.name} (waiting for {engine.health_path}, {waited:.0f}s)")
            if not process.alive():
                raise ApiError(422, "invalid_request_error", f"{engine.name} exited with status "
                               f"{process.proc.returncode} while starting; its last lines:\n{last_lines()}",
                               code="engine_failed")
            if waited > timeout_s:
                raise ApiError(504, "api_error", f"{engine.name} did not answer {engine.health_path} within "
                               f"{timeout_s:g}s (engine_start_timeout_s); its last lines:\n{last_lines()}",
                               code="engine_timeout")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.25)


async def watch(engine: ExternalEngine, on_death) -> None:
    """Until the engine exits: then `on_death(reason)` (the registry poisons the model and restarts it)."""
    while engine.process.alive():
        await asyncio.sleep(WATCH_S)
    on_death(f"{engine.name} exited with status {engine.process.proc.returncode}; its last lines:\n"
             f"{engine.process.last_lines(8)}")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]
