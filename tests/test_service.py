"""`cortex service`: every unit it renders is checked by systemd's own parser, `systemd-analyze verify`.

What verify checks here (systemd 252, not PID 1): every directive's syntax, that the ExecStart=
executable exists and that its quoted path resolves to it. It does not look the `User=` up (a
unit with `User=cortex`, a user this machine lacks, verifies clean: tested below), nor start
anything, so the sandbox's effect on a real GPU is not proven here. Arguments after the
executable are quoted by the rules of systemd.service(5); verify cannot show them, so the test
that starts the ExecStart= command line reads it back and runs it.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cortex_cli.commands.neuron import neuron
from cortex_cli.main import cli
from cortex_cli.service_plan import ServiceRequest, cortex_executable, plan_service, script_interpreter
from cortex_cli.service_unit import UnitError, UnitSpec, exec_path, render_unit
from cortex_gateway.config import GatewayConfig
from neuron.shared.config import NeuronConfig
from tests.helpers import free_port, http_json, stop_process, wait_serving
from tests.service_units import directives, gateway_state_toml, gateway_toml, rendered, service

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed: "
                                   "apt-get install systemd (it need not be PID 1)")
NEURON = ("--listen", "0.0.0.0:13131", "--gpus", "0,1", "--models-dir", "/srv/models")
NVIDIA = ("/dev/nvidiactl rw", "/dev/nvidia-uvm rw", "/dev/nvidia-uvm-tools rw", "char-nvidia-frontend rw",
          "char-nvidia rw", "char-nvidia-uvm rw")


def verify(tmp_path: Path, text: str, name: str, *, user: bool = False) -> None:
    """systemd-analyze verify on the unit written to a file: exit 0 and not one warning."""
    path = tmp_path / name
    path.write_text(text)
    env = dict(os.environ)
    cmd = [SYSTEMD_ANALYZE]
    if user:  # the user manager wants a runtime directory, which no login made here
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.append("--user")
    done = subprocess.run([*cmd, "verify", str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def neuron_toml(tmp_path: Path) -> Path:
    path = tmp_path / "neuron.toml"
    path.write_text('[neuron]\nmodels_dir = "models"\nshutdown_grace_s = 200\n')
    return path


STATE_LINES = 'state_dir = "/srv/gw state"\n[state]\nurl = "sqlite:///srv/db/state.db"\n'
VARIANTS = {
    "neuron": ("neuron", *NEURON),
    "neuron-no-gpu": ("neuron", "--no-gpu", "--listen", "127.0.0.1:13131"),
    "neuron-config": ("neuron", "--config", "{neuron_toml}", "--gpus", "0"),
    "neuron-user": ("neuron", "--user", "--gpus", "0", "--models-dir", "{tmp}/models"),
    "neuron-user-no-gpu": ("neuron", "--user", "--no-gpu"),
    "serve": ("serve", "--config", "{gateway_toml}", "--metrics-listen", "10.0.0.2:31314"),
    "serve-local-neuron": ("serve",),
    "serve-user": ("serve", "--user", "--config", "{gateway_toml}"),
    "serve-state": ("serve", "--config", "{gateway_state_toml}"),
    "quoting": ("neuron", "--name", 'a b$c%d"e\\f', "--models-dir", "{tmp}/my models"),
}


def variant_args(name: str, tmp_path: Path) -> tuple[str, ...]:
    values = {"tmp": str(tmp_path), "neuron_toml": str(neuron_toml(tmp_path)),
              "gateway_toml": str(gateway_toml(tmp_path)),
              "gateway_state_toml": str(gateway_state_toml(tmp_path / "sq", STATE_LINES))}
    return tuple(arg.format(**values) if "{" in arg else arg for arg in VARIANTS[name])


@needs_systemd
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_passes_systemd_analyze_verify(tmp_path, variant):
    args = variant_args(variant, tmp_path)
    text = rendered(*args)
    unit = "cortex-neuron.service" if args[0] == "neuron" else "cortex-gateway.service"
    verify(tmp_path, text, unit, user="--user" in args)


@needs_systemd
def test_a_user_this_machine_lacks_still_verifies(tmp_path):
    """Verify does not resolve User=: say so by testing it, rather than trusting it checked."""
    missing = "cortex-no-such-user"
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)
    text = rendered("neuron", "--run-as", missing, *NEURON)
    assert f"User={missing}" in text
    verify(tmp_path, text, "cortex-neuron.service")


def test_system_neuron_unit_has_every_directive():
    d = directives(rendered("neuron", *NEURON))
    exe = d["ExecStart"][0].split()[0]
    assert exe == str(cortex_executable()) and os.path.isabs(exe) and os.access(exe, os.X_OK)
    assert Path(exe).name == "cortex"
    assert d["ExecStart"] == [f"{exe} neuron --listen 0.0.0.0:13131 --gpus 0,1 --models-dir /srv/models"]
    assert d["KillSignal"] == ["SIGTERM"] and d["Restart"] == ["on-failure"] and d["RestartSec"] == ["5"]
    timeout = int(d["TimeoutStopSec"][0])
    assert timeout >= 120 and timeout > max(GatewayConfig.shutdown_grace_s, NeuronConfig.shutdown_grace_s)
    assert d["EnvironmentFile"] == ["-/etc/cortex/neuron.env"]
    assert d["User"] == ["cortex"] and d["Group"] == ["cortex"]
    assert d["StateDirectory"] == ["cortex"] and d["ReadWritePaths"] == ["/srv/models"]
    assert d["ProtectHome"] == [expected_protect_home()]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "DevicePolicy": "closed", "ProtectKernelTunables": "yes",
                       "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                       "LimitNOFILE": "524288", "WantedBy": "multi-user.target", "CapabilityBoundingSet": ""}.items():
        assert d[key] == [value], key
    assert set(NVIDIA) <= set(d["DeviceAllow"]) and "PrivateDevices" not in d
    assert "network-online.target" in d["After"][0].split() and d["Wants"] == ["network-online.target"]


def expected_protect_home() -> str:
    """yes, unless this environment's Python lives in a home (pyenv's under /root, say): then read-only."""
    python = script_interpreter(cortex_executable())
    homes = ("/home", "/root", "/run/user")
    return "read-only" if python and any(python.is_relative_to(h) for h in homes) else "yes"


def script(tmp_path: Path, shebang: str) -> Path:
    path = tmp_path / "bin" / "cortex"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{shebang}\nimport sys\n")
    path.chmod(0o755)
    return path


def test_a_python_in_a_home_directory_is_warned_about(tmp_path):
    """A venv made with pyenv's Python runs a Python under /root: hidden by ProtectHome=yes, so not hidden."""
    request = ServiceRequest("neuron", ())
    plan = plan_service(request, neuron, script(tmp_path, "#!/home/someone/.pyenv/versions/3.11/bin/python3"))
    assert plan.spec.protect_home == "read-only"
    assert any("/usr/bin/python3 -m venv /opt/cortex" in w for w in plan.warnings)
    plan = plan_service(request, neuron, script(tmp_path, "#!/bin/sh\n'''exec' \"/usr/bin/python3\" \"$0\""))
    assert plan.spec.protect_home == "yes" and not plan.warnings


def test_every_directive_is_explained_by_a_comment():
    """Each run of directives starts with a comment saying why (Description= and section heads aside)."""
    for args in (("neuron", *NEURON), ("serve", "--user")):
        explained = False
        for line in rendered(*args).splitlines():
            if not line or line.startswith("["):
                explained = False
            elif line.startswith("#"):
                explained = True
            elif not line.startswith(("Description=", "WantedBy=")):
                assert explained, f"{line!r} has no comment above it"


def test_gpus_are_allowed_only_where_asked(tmp_path):
    no_gpu = directives(rendered("neuron", "--no-gpu"))
    assert "DeviceAllow" not in no_gpu and no_gpu["DevicePolicy"] == ["closed"] and no_gpu["PrivateDevices"] == ["yes"]
    gateway = directives(rendered("serve", "--config", str(gateway_toml(tmp_path))))
    assert "DeviceAllow" not in gateway and gateway["PrivateDevices"] == ["yes"]
    local = directives(rendered("serve"))  # its local neuron runs the models
    assert set(NVIDIA) <= set(local["DeviceAllow"])


def test_user_unit_has_no_user_and_wants_default_target():
    d = directives(rendered("neuron", "--user", "--gpus", "0"))
    assert "User" not in d and "Group" not in d and "StateDirectory" not in d
    assert d["WantedBy"] == ["default.target"] and "After" not in d
    assert d["NoNewPrivileges"] == ["yes"] and d["KillSignal"] == ["SIGTERM"]
    assert d["EnvironmentFile"][0].endswith("/.config/cortex/neuron.env")
    # no filesystem or device sandbox: a user manager cannot set them up everywhere
    assert "ProtectSystem" not in d and "DeviceAllow" not in d


def test_models_dir_and_drain_come_from_the_config_file(tmp_path):
    d = directives(rendered("neuron", "--config", str(neuron_toml(tmp_path))))
    assert d["ReadWritePaths"] == [str(tmp_path / "models")]  # relative to the file, as the neuron reads it
    assert d["TimeoutStopSec"] == [str(200 + 90)]  # shutdown_grace_s = 200, plus the unload
    assert d["ExecStart"][0].endswith(f"neuron --config {tmp_path / 'neuron.toml'}")


def test_without_a_models_dir_a_system_neuron_keeps_models_in_its_state_directory():
    d = directives(rendered("neuron"))
    assert "CORTEX_MODELS_DIR=/var/lib/cortex/models" in d["Environment"]
    assert d["StateDirectory"] == ["cortex cortex/models"] and "ReadWritePaths" not in d


def test_gateway_can_write_pins_beside_its_models_file(tmp_path):
    d = directives(rendered("serve", "--config", str(gateway_toml(tmp_path))))
    assert d["ReadWritePaths"] == [str(tmp_path / "state")]
    assert int(d["TimeoutStopSec"][0]) > GatewayConfig.shutdown_grace_s


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = directives(rendered("neuron", "--models-dir", "models", "--token-file", "tok"))
    assert f"--models-dir {tmp_path}/models --token-file {tmp_path}/tok" in d["ExecStart"][0]


@pytest.mark.parametrize("args", [("--token", "s3cret-token"), ("--token=s3cret-token",)])
def test_a_token_on_the_command_line_is_refused(args):
    result = service("neuron", "--listen", "0.0.0.0:13131", *args)
    assert result.exit_code == 2
    assert "--token: a secret on the command line" in result.output and "environment file" in result.output
    assert "s3cret-token" not in result.output


def test_a_token_in_the_environment_never_reaches_the_unit():
    result = service("neuron", "--listen", "0.0.0.0:13131", env={"CORTEX_NEURON_TOKEN": "s3cret-token"})
    assert result.exit_code == 0 and "s3cret-token" not in result.output


def test_a_neuron_beyond_loopback_without_a_token_is_warned_about(tmp_path):
    result = service("neuron", "--listen", "0.0.0.0:13131", "--env-file", str(tmp_path / "neuron.env"))
    assert "has no token: it will refuse to start" in result.stderr
    (tmp_path / "neuron.env").write_text("CORTEX_NEURON_TOKEN=abcdefgh\n")
    result = service("neuron", "--listen", "0.0.0.0:13131", "--env-file", str(tmp_path / "neuron.env"))
    assert result.exit_code == 0 and "no token" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (("neuron", "--bogus", "1"), "cortex neuron: No such option '--bogus'"),
    (("neuron", "--listen", "nope"), "--listen: expected HOST:PORT"),
    (("neuron", "--gpus", "x"), "--gpus: expected GPU indices"),
    (("neuron", "--user", "--run-as", "bob"), "--run-as: a user unit runs as you"),
    (("neuron", "--run-as", "bob\nExecStartPre=/bin/touch /tmp/pwned"), "--run-as: 'bob\\nExecStartPre"),
    (("neuron", "--run-as", "%h"), "--run-as: '%h' is not a user name"),
    (("neuron", "--run-as", "1000"), "--run-as: '1000' is not a user name"),
    (("serve", "--run-as", "a b"), "--run-as: 'a b' is not a user name"),
    (("neuron", "--config", "/nonexistent/neuron.toml"), "--config: /nonexistent/neuron.toml: cannot read"),
    (("neuron", "--name", "two\nlines"), "cannot hold control characters"),
    (("serve", "--unit-name", "a b"), "--unit-name: 'a b' is not a unit name"),
])
def test_bad_command_lines_are_refused_with_the_reason(args, message):
    result = service(*args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_paths_under_home_make_homes_read_only_not_hidden():
    result = service("neuron", "--model-root", "/home/someone/checkpoints")
    assert result.exit_code == 0
    assert directives(result.stdout)["ProtectHome"] == ["read-only"]
    assert "/home/someone/checkpoints is under a home directory" in result.stderr


@needs_systemd
def test_the_executable_path_is_quoted_as_systemd_reads_it(tmp_path):
    """verify resolves ExecStart='s first word: a copy of cortex in an awkward directory must be found."""
    awkward = tmp_path / "a b%c$d;e"
    awkward.mkdir()
    exe = awkward / "cortex"
    shutil.copy(cortex_executable(), exe)
    text = render_unit(UnitSpec(description="quoting", argv=(str(exe), "neuron"), env_file="/etc/cortex/neuron.env"))
    verify(tmp_path, text, "cortex-neuron.service")
    for bad in ('/opt/a"b/cortex', "/opt/a'b/cortex", "/opt/a\\b/cortex", "relative/cortex"):
        with pytest.raises(UnitError):
            exec_path(bad)


def exec_start_argv(text: str) -> list[str]:
    """ExecStart= read back for the quoting `cortex service` writes: %% and $$ undone, C-style quotes."""
    line = directives(text)["ExecStart"][0]
    return shlex.split(line.replace("%%", "%").replace("$$", "$"))


def test_quoted_options_reach_the_command_unchanged(tmp_path):
    text = rendered("neuron", "--name", 'a b$c%d"e\\f', "--models-dir", f"{tmp_path}/my models")
    assert exec_start_argv(text)[1:] == ["neuron", "--name", 'a b$c%d"e\\f', "--models-dir", f"{tmp_path}/my models"]


def test_exec_start_runs_the_servers(tmp_path):
    """The units' command lines, run as systemd would run them, give a healthy neuron and gateway."""
    port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    (tmp_path / "models").mkdir()
    neuron_argv = exec_start_argv(rendered("neuron", "--listen", f"127.0.0.1:{port}", "--name", "beast",
                                           "--models-dir", str(tmp_path / "models"), "--no-gpu"))
    config = tmp_path / "cortex.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:{gateway_port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
                      f'[[neurons]]\nname = "beast"\nendpoint = "http://127.0.0.1:{port}"\n')
    gateway_argv = exec_start_argv(rendered("serve", "--config", str(config)))
    assert neuron_argv[0] == gateway_argv[0] == str(cortex_executable())
    procs = []
    try:
        for argv, url in ((neuron_argv, f"http://127.0.0.1:{port}"), (gateway_argv, f"http://127.0.0.1:{gateway_port}")):
            log = open(tmp_path / f"{len(procs)}.log", "wb")
            procs.append(subprocess.Popen(argv, cwd="/", stdout=log, stderr=subprocess.STDOUT))
            wait_healthy(procs[-1], url, tmp_path / f"{len(procs) - 1}.log")
        status, body = http_json("GET", f"http://127.0.0.1:{gateway_port}/health")
        assert status == 200 and body["nodes"] == {"healthy": 1, "total": 1}, body
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    assert [p.returncode for p in procs] == [0, 0]  # SIGTERM is a clean stop: Restart=on-failure leaves it


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Up, and for a gateway its one neuron seen healthy (a neuron's /health has no `nodes`)."""
    def ready(status: int, body: bytes) -> bool:
        return status == 200 and json.loads(body).get("nodes", {"healthy": 1})["healthy"] == 1

    wait_serving(proc, url + "/health", log.read_text, 60, ready)


def test_install_writes_the_unit_atomically_and_says_what_to_run(tmp_path):
    units = tmp_path / "units"
    result = service("neuron", *NEURON, "--install", "--unit-dir", str(units))
    assert result.exit_code == 0, result.output
    target = units / "cortex-neuron.service"
    assert target.read_text() == rendered("neuron", *NEURON)
    assert target.stat().st_mode & 0o777 == 0o644
    assert "systemctl daemon-reload" in result.stdout
    assert "systemctl enable --now cortex-neuron.service" in result.stdout
    # A rename, never a rewrite in place: a link to the old file keeps the old text whole.
    os.link(target, tmp_path / "old")
    result = service("neuron", "--listen", "0.0.0.0:14141", "--install", "--unit-dir", str(units))
    assert result.exit_code == 0, result.output
    assert "--listen 0.0.0.0:14141" in target.read_text()
    assert "--listen 0.0.0.0:13131" in (tmp_path / "old").read_text()
    assert sorted(p.name for p in units.iterdir()) == ["cortex-neuron.service"]  # no temporary file left


def test_install_of_a_user_unit_says_systemctl_user(tmp_path):
    result = service("serve", "--user", "--unit-name", "my-gateway.service", "--install", "--unit-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "my-gateway.service").is_file()
    assert "systemctl --user daemon-reload" in result.stdout and "systemctl --user enable --now my-gateway.service" \
        in result.stdout and "loginctl enable-linger" in result.stdout


def test_install_into_a_path_that_cannot_be_a_directory_fails_cleanly(tmp_path):
    (tmp_path / "file").write_text("")
    result = service("neuron", "--install", "--unit-dir", str(tmp_path / "file" / "units"))
    assert result.exit_code == 1 and "cannot write" in result.output
    assert "Traceback" not in result.output


def test_cortex_help_lists_service():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "service" in result.output
