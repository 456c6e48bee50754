"""The one field checker (neuron/shared/config_fields.py) and the rules both servers' configs read by.

Pure: config files in tmp_path, read by the same functions the commands call; no server starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_gateway.config import load_config, load_models_file
from neuron.shared.config import config_from_file, is_loopback
from neuron.shared.config_fields import SERVER_LIMITS, ConfigError, Section, StartupError

# What each rule accepts (True) and refuses (False), by value: written out, not computed by the checker.
EXPECTED = {
    (("above", 0),): {0: False, -1: False, 0.5: True, 2: True},  # a timeout, a size
    (("minimum", 0),): {0: True, -1: False, 0.5: True, 2: True},  # a grace
    (("minimum", 1),): {0: False, -1: False, 1: True, 2: True},  # a count where 0 means nothing
}
CASES = [(key, value, ok) for key, bounds in sorted(SERVER_LIMITS.items())
         for value, ok in EXPECTED[tuple(bounds.items())].items()]
SERVERS = {"neuron": ("neuron.toml", "[neuron]", config_from_file),
           "gateway": ("cortex.toml", "[gateway]", load_config)}


def read(tmp_path: Path, server: str, body: str):
    name, table, reader = SERVERS[server]
    path = tmp_path / name
    path.write_text(f"{table}\n{body}\n")
    return reader(path)


def refusal(tmp_path: Path, server: str, body: str) -> str:
    with pytest.raises(ConfigError) as err:
        read(tmp_path, server, body)
    return str(err.value)


@pytest.mark.parametrize("key, value, ok", CASES)
def test_a_key_both_servers_have_is_read_by_one_rule(tmp_path, key, value, ok):
    """Same value, same answer on both servers; a refusal names the file, the table, the key and the range."""
    answers = set()
    for server, (name, table, _) in SERVERS.items():
        if ok:
            assert getattr(read(tmp_path, server, f"{key} = {value}"), key) == value
            continue
        message = refusal(tmp_path, server, f"{key} = {value}")
        assert message.startswith(f"{tmp_path / name}: {table}.{key}: expected "), message
        assert message.endswith(f", got {value}"), message
        answers.add(message.split(": expected ", 1)[1])
    assert len(answers) <= 1, answers


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("body, says", [
    ("max_connections_per_client = 0", "max_connections_per_client: expected an integer >= 1, got 0"),
    ("max_connections_per_client = 2.5", "max_connections_per_client: expected an integer >= 1, got 2.5"),
    ("max_connections_per_client = true", "max_connections_per_client: expected an integer >= 1, got True"),
    ("idle_timeout_s = 0", "idle_timeout_s: expected a number of seconds > 0, got 0"),
    ("idle_timeout_s = nan", "idle_timeout_s: expected a number of seconds > 0, got nan"),
    ("shutdown_grace_s = inf", "shutdown_grace_s: expected a number of seconds >= 0, got inf"),
    ('max_body_mb = "lots"', "max_body_mb: expected a number of MiB > 0, got 'lots'"),
    ("listen = 31313", "listen: expected HOST:PORT, got 31313"),
])
def test_refusals_say_what_was_expected(tmp_path, server, body, says):
    assert refusal(tmp_path, server, body).endswith(says)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_grace_of_zero_stops_at_once_and_is_kept(tmp_path, server):
    assert read(tmp_path, server, "shutdown_grace_s = 0").shutdown_grace_s == 0.0
    assert read(tmp_path, server, "").shutdown_grace_s == 30.0


@pytest.mark.parametrize("server, body, says", [
    ("gateway", "down_after = 0", "[gateway].down_after: expected an integer >= 1, got 0"),
    ("gateway", "responses_store_max = -1", "[gateway].responses_store_max: expected an integer >= 0, got -1"),
    ("gateway", "poll_interval_s = -1", "[gateway].poll_interval_s: expected a number of seconds > 0, got -1"),
    ("gateway", "max_connections_per_node = 0", "max_connections_per_node: expected an integer from 1 to 992, got 0"),
    ("gateway", 'hosted_tools = "keep"', 'hosted_tools: expected "drop" or "refuse", got \'keep\''),
    ("neuron", "cpu_memory_mb = 0.5", "[neuron].cpu_memory_mb: expected a number of MiB >= 1, got 0.5"),
    ("neuron", 'private_network = "yes"', "[neuron].private_network: expected true or false, got 'yes'"),
    ("neuron", "model_roots = [1]", "[neuron].model_roots: expected a list of paths, got [1]"),
])
def test_the_keys_of_one_server(tmp_path, server, body, says):
    assert says in refusal(tmp_path, server, body)


@pytest.mark.parametrize("body, says", [
    ("[admission]\nmax_in_flight = 0", "[admission].max_in_flight: expected an integer from 1 to 4096, got 0"),
    ("[admission]\nmax_queue_depth = 70000", "max_queue_depth: expected an integer from 0 to 65536, got 70000"),
    ("[admission]\nmax_wait_s = 7200", "[admission].max_wait_s: expected a number of seconds from 0 to 3600, got 7200"),
    ("[engines]\nstart_timeout_s = 0", "[engines].start_timeout_s: expected a number of seconds > 0, got 0"),
    ("neuron = 3", "[neuron]: expected a table, got 3"),
])
def test_the_neurons_other_tables(tmp_path, body, says):
    """[admission] has the bounds a load's own overrides have (neuron.shared.protocol.LoadRequest)."""
    path = tmp_path / "neuron.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        config_from_file(path)
    assert str(err.value).endswith(says)
    path.write_text("[admission]\nmax_queue_depth = 0\nmax_wait_s = 0\n")
    assert (config_from_file(path).admission.max_queue_depth, config_from_file(path).admission.max_wait_s) == (0, 0)


@pytest.mark.parametrize("entry, says", [
    ('id = "m"\ncontext_size = 0', "[[models]] #1.context_size: expected an integer from 16 to 4194304, got 0"),
    ('id = "m"\nbackend = "onnx"', '[[models]] #1.backend: expected one of "auto", "torch"'),
    ('id = "m"\ndevices = [true]', "[[models]] #1.devices: expected a list of device indices, got [True]"),
])
def test_the_models_file(tmp_path, entry, says):
    path = tmp_path / "models.toml"
    path.write_text(f"[[models]]\n{entry}\n")
    with pytest.raises(ConfigError) as err:
        load_models_file(path)
    assert says in str(err.value)


def test_auth_limits_and_shutdown_grace_read_from_cortex_toml(tmp_path):
    path = tmp_path / "cortex.toml"
    path.write_text("[auth]\nrequests_per_minute = -1\n")
    with pytest.raises(ConfigError, match=r"\[auth\]\.requests_per_minute: expected an integer >= 0, got -1"):
        load_config(path)
    path.write_text("[gateway]\nshutdown_grace_s = 5\n[auth]\nrequests_per_minute = 0\n")
    config = load_config(path)
    assert (config.shutdown_grace_s, config.auth.requests_per_minute) == (5.0, 0)


def test_a_section_names_where_it_is_and_reads_paths_beside_its_file(tmp_path):
    top = Section({"gateway": {"dir": "sub", "home": "~/x", "n": 3}, "neurons": [{"name": "a"}, 7]},
                  tmp_path / "cortex.toml")
    gw = top.table("gateway")
    assert gw.at("n") == f"{tmp_path / 'cortex.toml'}: [gateway].n" and top.at("models_config").endswith(
        "cortex.toml: models_config")
    assert gw.opt_path("dir") == (tmp_path / "sub").resolve() and gw.opt_path("home") == Path("~/x").expanduser()
    assert gw.opt_int("n", maximum=3) == 3 and gw.opt_int("absent", 9) == 9 and gw.opt_float("n") == 3.0
    with pytest.raises(ConfigError, match=r"cortex.toml: \[\[neurons\]\] #2: expected a table, got 7"):
        top.tables("neurons")
    assert isinstance(ConfigError("x"), StartupError), "the commands catch both as one"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("0:0:0:0:0:0:0:1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("127.example.com", False), ("", False),
])
def test_one_loopback_check(host, loopback):
    assert is_loopback(host) is loopback
