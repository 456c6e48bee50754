"""What a user can fix before serving is one line and exit 2; a crash keeps its traceback.

Real `cortex neuron` / `cortex serve` processes. For the crash, the process runs the real command
line with one function of the server replaced by a bug (a `RuntimeError`, which `cortex serve`
used to turn into one line), once before the port listens and once after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import CORTEX, free_port

ENV = {k: v for k, v in os.environ.items() if k not in ("CORTEX_NEURON_TOKEN", "CORTEX_CONFIG")}
# The real command line, with `target` replaced by a function that raises: what a bug in it looks like.
WITH_A_BUG = ("import sys, importlib\n"
              "module, name = sys.argv[1].rsplit('.', 1)\n"
              "def bug(*args, **kwargs):\n"
              "    raise RuntimeError('a bug, not the user\\'s doing')\n"
              "setattr(importlib.import_module(module), name, bug)\n"
              "from cortex_cli.main import cli\n"
              "cli(sys.argv[2:], prog_name='cortex')\n")


def cortex(*args: str, bug: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITH_A_BUG, bug, *args] if bug else CORTEX + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)


def gateway_toml(tmp_path, port: int, metrics_port: int, extra: str = "") -> str:
    path = tmp_path / "cortex.toml"
    path.write_text(f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n{extra}')
    return str(path)


def neuron_toml(tmp_path, extra: str) -> str:
    path = tmp_path / "neuron.toml"
    path.write_text(f'[neuron]\nlisten = "127.0.0.1:{free_port()}"\nmodels_dir = "models"\n{extra}')
    return str(path)


def assert_one_line(result: subprocess.CompletedProcess, says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and says in errors[0] and result.stderr.rstrip().endswith(errors[0]), result.stderr


@pytest.mark.parametrize("command", ["neuron", "serve"])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, command):
    if command == "neuron":
        path, says = neuron_toml(tmp_path, "max_connections_per_client = 0\n"), "neuron.toml: [neuron]."
    else:
        path, says = gateway_toml(tmp_path, free_port(), free_port(), "max_connections_per_client = 0\n"), \
            "cortex.toml: [gateway]."
    result = cortex(command, "--config", path)
    assert_one_line(result, says + "max_connections_per_client: expected an integer >= 1, got 0")
    assert result.stderr.strip().startswith("Error: "), "nothing else before it: the config is read first"


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    assert_one_line(cortex("serve", "--config", gateway_toml(tmp_path, free_port(), free_port()), "--listen", "x"),
                    "--listen: expected HOST:PORT")


@pytest.mark.parametrize("command", ["neuron", "serve-api", "serve-metrics"])
def test_a_port_in_use_is_one_line_that_names_it(tmp_path, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        if command == "neuron":
            result = cortex("neuron", "--listen", f"127.0.0.1:{busy}", "--models-dir", str(tmp_path / "models"))
        else:
            ports = (busy, free_port()) if command == "serve-api" else (free_port(), busy)
            result = cortex("serve", "--config", gateway_toml(tmp_path, *ports))
    assert_one_line(result, f"cannot listen on 127.0.0.1:{busy}: ")


@pytest.mark.parametrize("command, bug", [
    ("neuron", "neuron.server.app.create_app"),  # before the port listens
    ("serve", "cortex_gateway.server._warn_if_open"),  # once both ports listen
])
def test_a_crash_keeps_its_traceback(tmp_path, command, bug):
    config = neuron_toml(tmp_path, "") if command == "neuron" else gateway_toml(tmp_path, free_port(), free_port())
    result = cortex(command, "--config", config, bug=bug)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: a bug, not the user's doing"), result.stderr
