"""Flags over config files (what `cortex neuron` and `cortex serve` run), the atomic writer, and the
gateway's shutdown grace reaching its systemd unit. Pure: no server starts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cortex_cli.main import cli
from cortex_gateway.config import gateway_config_from_flags, load_config, locate_config
from neuron.shared.config import ConfigError, neuron_config_from_flags
from neuron.shared.files import write_atomic


def test_neuron_flags_win_over_the_file_and_model_roots_add_up(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('[neuron]\nlisten = "127.0.0.1:9000"\nname = "beast"\nmodel_roots = ["a"]\ncpu_memory_mb = 100\n')
    config = neuron_config_from_flags(path, listen="127.0.0.1:9001", cpu_memory_mb=200, model_roots=(tmp_path / "b",),
                                      demo=True)
    assert (config.port, config.name, config.cpu_memory_mb, config.demo) == (9001, "beast", 200, True)
    assert config.model_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert neuron_config_from_flags(path).port == 9000


def test_neuron_flags_are_checked_and_an_open_port_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("CORTEX_NEURON_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="--listen: expected HOST:PORT"):
        neuron_config_from_flags(listen="nope")
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0:13131 with no token"):
        neuron_config_from_flags(listen="0.0.0.0:13131")
    (tmp_path / "token").write_text("s3cret-token\n")
    config = neuron_config_from_flags(listen="0.0.0.0:13131", token_file=tmp_path / "token")
    assert config.token == "s3cret-token"
    assert neuron_config_from_flags(listen="0.0.0.0:13131", private_network=True).token == ""


def test_gateway_flags_over_the_file_it_finds(tmp_path, monkeypatch):
    path = tmp_path / "cortex.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:4000"\nmetrics_listen = "127.0.0.1:4001"\n')
    monkeypatch.setenv("CORTEX_CONFIG", str(path))
    assert locate_config(None) == path and locate_config(tmp_path / "other.toml") == tmp_path / "other.toml"
    config = gateway_config_from_flags(None, metrics_listen="127.0.0.1:5001")
    assert (config.port, config.metrics_port, config.local_neuron) == (4000, 5001, False)
    with pytest.raises(ConfigError, match="--listen: expected HOST:PORT"):
        gateway_config_from_flags(path, listen="4000")


def test_no_config_at_all_is_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.delenv("CORTEX_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = gateway_config_from_flags(None, listen="127.0.0.1:4000")
    assert config.local_neuron and (config.host, config.port) == ("127.0.0.1", 4000)
    [local] = config.neurons
    assert local.name == "local" and local.endpoint.startswith("http://127.0.0.1:")


def test_write_atomic_keeps_the_mode_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "models.toml"
    write_atomic(path, "a = 1\n")
    assert path.read_text() == "a = 1\n" and stat.S_IMODE(path.stat().st_mode) == 0o600, "new: private"
    os.chmod(path, 0o640)
    write_atomic(path, b"a = 2\n")
    assert path.read_text() == "a = 2\n" and stat.S_IMODE(path.stat().st_mode) == 0o640, "replaced: its mode kept"
    write_atomic(tmp_path / "x.service", "[Unit]\n", mode=0o644)
    assert stat.S_IMODE((tmp_path / "x.service").stat().st_mode) == 0o644
    with pytest.raises(TypeError):
        write_atomic(path, 3)  # type: ignore[arg-type]
    assert path.read_text() == "a = 2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["models.toml",
                                                                                            "x.service"]


@pytest.mark.parametrize("grace, stop_timeout", [(None, 120), (200, 290)])
def test_the_gateways_grace_sets_its_units_stop_timeout(tmp_path, grace, stop_timeout):
    path = tmp_path / "cortex.toml"
    path.write_text("[gateway]\n" + (f"shutdown_grace_s = {grace}\n" if grace is not None else ""))
    result = CliRunner().invoke(cli, ["service", "serve", "--user", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"TimeoutStopSec={stop_timeout}\n" in result.stdout


def test_the_example_config_reads_with_every_key_it_shows():
    config = load_config(Path(__file__).resolve().parent.parent / "cortex.example.toml")
    assert config.shutdown_grace_s == 30 and config.max_connections_per_client == 256 and len(config.neurons) == 2
