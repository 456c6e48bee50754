"""`cortex service serve` and the gateway's state: what the unit's sandbox allows for `[gateway] state_dir` and
`[state] url` (cortex_cli/service_state.py), planned only, no systemd needed."""

from __future__ import annotations

import pytest

from tests.service_units import directives, gateway_state_toml, rendered, service


def test_the_gateway_state_dir_and_a_sqlite_file_elsewhere_are_writable(tmp_path):
    config = gateway_state_toml(tmp_path, 'state_dir = "/srv/gw-state"\n[state]\nurl = "sqlite:db/state.db"\n')
    d = directives(rendered("serve", "--config", str(config)))
    # the gateway_id file that names this instance, then the database's directory (relative to the config file)
    assert d["ReadWritePaths"] == [str(tmp_path / "state"), "/srv/gw-state", str(tmp_path / "db")]


def test_a_sqlite_file_in_the_state_dir_needs_nothing_more(tmp_path):
    config = gateway_state_toml(tmp_path, 'state_dir = "/srv/gw"\n[state]\nurl = "sqlite:///srv/gw/db/s.db"\n')
    assert directives(rendered("serve", "--config", str(config)))["ReadWritePaths"] == [
        str(tmp_path / "state"), "/srv/gw"]


def test_a_state_dir_under_the_units_home_is_a_state_directory(tmp_path):
    # the unit's HOME is /var/lib/cortex: its ~ is there, not in the home of whoever ran cortex service
    config = gateway_state_toml(tmp_path, 'state_dir = "~/gw-a"\n')
    d = directives(rendered("serve", "--config", str(config)))
    assert d["StateDirectory"] == ["cortex cortex/gw-a"] and d["ReadWritePaths"] == [str(tmp_path / "state")]


def test_a_sqlite_file_beside_the_config_is_warned_about(tmp_path):
    result = service("serve", "--config", str(gateway_state_toml(tmp_path, '[state]\nurl = "sqlite:state.db"\n')))
    assert result.exit_code == 0 and "state.db sits beside cortex.toml" in result.stderr
    assert str(tmp_path) in directives(result.stdout)["ReadWritePaths"]


def test_a_remote_postgresql_needs_no_path_and_no_ordering(tmp_path):
    config = gateway_state_toml(tmp_path, '[state]\nurl = "postgresql://cortex:pw@10.0.0.5:5432/cortex"\n')
    result = service("serve", "--config", str(config))
    assert result.exit_code == 0 and "state database" not in result.stderr
    d = directives(result.stdout)
    assert d["ReadWritePaths"] == [str(tmp_path / "state")] and d["StateDirectory"] == ["cortex"]
    assert "AF_INET" in d["RestrictAddressFamilies"][0] and "PrivateNetwork" not in d


@pytest.mark.parametrize("url", ["postgresql://cortex@localhost/cortex", "postgres://cortex@127.0.0.1:5433/c",
                                 "postgresql:///cortex?host=/run/postgresql"])
def test_a_postgresql_on_this_machine_is_told_to_start_first(tmp_path, url):
    config = gateway_state_toml(tmp_path, f'[state]\nurl = "{url}"\n')
    result = service("serve", "--unit-name", "gw-a", "--config", str(config))
    assert result.exit_code == 0
    assert "systemctl edit gw-a` and add: [Unit] After=postgresql.service" in result.stderr
    assert "AF_UNIX" in directives(result.stdout)["RestrictAddressFamilies"][0]  # its socket is reachable


@pytest.mark.parametrize("lines, message", [
    ('[state]\nurl = "mysql://x"\n', "[state].url: expected sqlite:///ABSOLUTE/PATH.db"),
    ('[state]\nurl = "postgresql://u:secret@h/"\n', "names its database"),
    ('state_dir = 3\n', "[gateway].state_dir: expected a path"),
])
def test_a_bad_state_setting_is_refused_before_a_unit_exists(tmp_path, lines, message):
    result = service("serve", "--config", str(gateway_state_toml(tmp_path, lines)))
    assert result.exit_code == 2 and message in result.output and "secret" not in result.output, result.output
