"""From `cortex service neuron|serve OPTIONS` to a `UnitSpec`, and the unit file onto disk.

The options are parsed by the real `cortex neuron` / `cortex serve` command, so no unit is
written for a command line that would not parse, and the unit follows those commands' options as
they change. Only the options given are carried over, paths made absolute (a service starts in
`/`). A token or key on the command line is refused: it would sit in a world-readable unit file
and in `ps`; it belongs in the environment file.

What the sandbox must leave writable (the models directory, the directory of the gateway's models
file, where pins are written) and how long a stop may take (the configured drain) are read from
the options and from the config file they name.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from cortex_cli.service_unit import STATE_DIR, UnitSpec, user_name

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
HOME_TREES = (Path("/home"), Path("/root"), Path("/run/user"))  # what ProtectHome= hides
MIN_TIMEOUT_STOP_S = 120
UNLOAD_MARGIN_S = 90  # beyond the drain: unloading big models and freeing their memory
UNITS = {"neuron": ("cortex-neuron", "cortex neuron: the GPU node daemon", "neuron.env"),
         "serve": ("cortex-gateway", "cortex serve: the gateway over the fleet", "gateway.env")}
_SECRET = re.compile(r"(^|_)(token|key|secret|password)$")  # a parameter's name; not token_file
_SHEBANG = re.compile(r"^#!\s*(\S+)")
_SH_EXEC = re.compile(r"^'''exec' \"?([^\"\s]+)")  # pip's form for interpreter paths too long for #!
_UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.-]*$")


class PlanError(ValueError):
    """A service that cannot be rendered as asked; the message says what to do instead."""


@dataclass(frozen=True)
class ServiceRequest:
    """What `cortex service` was asked for: the server's command line and the unit's own choices."""

    command: str  # "neuron" or "serve"
    args: tuple[str, ...]
    user_unit: bool = False
    run_as: str = "cortex"
    env_file: Path | None = None
    no_gpu: bool = False
    unit_name: str | None = None


@dataclass(frozen=True)
class Plan:
    unit_name: str  # with .service
    spec: UnitSpec
    warnings: tuple[str, ...] = ()
    must_exist: tuple[Path, ...] = ()  # directories the sandbox needs before the unit starts


def plan_service(request: ServiceRequest, command: click.Command, executable: Path) -> Plan:
    """The unit for running `command` (the real click command) with `request.args`."""
    if not request.user_unit:
        user_name(request.run_as)  # checked before it is written into a warning, a directive or a next step
    given = given_options(command, request.command, request.args)
    argv = (str(executable), request.command, *option_words(given))
    base, description, env_name = UNITS[request.command]
    needs = _Needs(request, request.env_file or _default_env_file(request, env_name))
    needs.reads(executable)
    if (interpreter := script_interpreter(executable)) is not None:
        # A venv's python is a link to the Python that made it, which may be pyenv's, in a home.
        needs.reads(interpreter, "it is the Python the cortex script runs on; make the virtual environment "
                    "with the system's Python: sudo /usr/bin/python3 -m venv /opt/cortex")
    for name in ("token_file", "config_path"):
        if name in given:
            needs.reads(given[name][1])
    for root in given.get("model_roots", (None, ()))[1]:
        needs.reads(root)
    if request.command == "neuron":
        drain = _neuron_needs(given, needs)
    else:
        drain = _gateway_needs(given, needs)
    spec = UnitSpec(
        description=description, argv=argv, env_file=str(needs.env_file),
        user_unit=request.user_unit, run_as=request.run_as, gpu=needs.gpu, write_paths=tuple(needs.written),
        state_dirs=tuple(needs.state_dirs), environment=tuple(needs.environment),
        protect_home="read-only" if needs.under_home else "yes",
        timeout_stop_s=max(MIN_TIMEOUT_STOP_S, math.ceil(drain) + UNLOAD_MARGIN_S))
    return Plan(unit_file_name(request.unit_name or base), spec, tuple(needs.warnings), tuple(needs.must_exist))


def given_options(command: click.Command, name: str, args: tuple[str, ...]) -> dict[str, tuple[click.Option, object]]:
    """The options given on the command line, parsed and checked by the command itself."""
    try:
        ctx = command.make_context(f"cortex {name}", list(args))
    except click.UsageError as exc:
        raise PlanError(f"cortex {name}: {exc.format_message()} (see cortex {name} --help)") from None
    given = {}
    for param in command.params:
        if isinstance(param, click.Option) and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            given[param.name] = (param, ctx.params[param.name])
    secrets = [p.opts[-1] for p, _ in given.values() if _SECRET.search(p.name or "")]
    if secrets:
        raise PlanError(f"{secrets[0]}: a secret on the command line would be in the unit file and in ps for "
                        "every user of the machine. Put it in the environment file instead "
                        "(CORTEX_NEURON_TOKEN=... in /etc/cortex/neuron.env, mode 600; see --env-file), "
                        "or use --token-file")
    _check_values(given)
    return given


def _check_values(given: dict[str, tuple[click.Option, object]]) -> None:
    """What the servers check only once they run (addresses, GPU indices), checked before a unit exists."""
    from neuron.shared.config import ConfigError, parse_gpus, parse_listen

    checks = {"listen": parse_listen, "metrics_listen": parse_listen, "gpus": parse_gpus}
    try:
        for name, check in checks.items():
            if name in given:
                check(given[name][1], given[name][0].opts[-1])
    except ConfigError as exc:
        raise PlanError(str(exc)) from None


def option_words(given: dict[str, tuple[click.Option, object]]) -> list[str]:
    """The given options as words for ExecStart=, in the command's own order, paths absolute."""
    words: list[str] = []
    for param, value in given.values():
        flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        if param.is_flag:
            words.append(flag if value else param.secondary_opts[0])
            continue
        for item in value if param.multiple else (value,):
            words += [flag, _word(item)]
    return words


def _word(value: object) -> str:
    if isinstance(value, Path):
        return str(_absolute(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Needs:
    """What the sandbox must allow, gathered while the command line and its config are read."""

    def __init__(self, request: ServiceRequest, env_file: Path):
        self.request = request
        self.env_file = env_file
        self.written: list[tuple[str, str]] = []
        self.state_dirs = ["cortex"]
        self.environment: list[tuple[str, str]] = [] if request.user_unit else [("HOME", STATE_DIR)]
        self.must_exist: list[Path] = []
        self.warnings: list[str] = []
        self.under_home = False
        self.gpu = False

    def reads(self, path: Path | str, fix: str = "a system-wide install, such as a virtual environment in "
              "/opt/cortex, avoids both") -> None:
        path = _absolute(path)
        if not self.request.user_unit and any(path.is_relative_to(h) for h in HOME_TREES):
            self.under_home = True
            self.warnings.append(f"{path} is under a home directory: the unit makes homes read-only rather than "
                                 f"hidden, and user {self.request.run_as} must be able to read it ({fix})")

    def writes(self, path: Path, why: str) -> None:
        if self.request.user_unit:
            return
        self.reads(path)
        if path == Path(STATE_DIR):
            return
        if path.is_relative_to(STATE_DIR):  # systemd makes and owns it: StateDirectory=
            self.state_dirs.append(str(Path("cortex") / path.relative_to(STATE_DIR)))
        else:
            self.written.append((str(path), why))
            self.must_exist.append(path)

    def default_models_dir(self) -> None:
        """No models dir given: a system unit keeps the models in its state directory."""
        if not self.request.user_unit:
            self.environment.append(("CORTEX_MODELS_DIR", f"{STATE_DIR}/models"))
            self.state_dirs.append("cortex/models")


def _neuron_needs(given: dict, needs: _Needs) -> float:
    """Note the neuron's models directory and devices; return its drain (shutdown_grace_s)."""
    from neuron.shared.config import NeuronConfig

    config = _absolute(given["config_path"][1]) if "config_path" in given else None
    settings = _toml_table(config, "neuron") if config else {}
    if "models_dir" in given:
        needs.writes(_absolute(given["models_dir"][1]), "The models directory: pulls write weights there")
    elif config and isinstance(settings.get("models_dir"), str):  # relative to the file, as the neuron reads it
        models_dir = (config.parent / Path(settings["models_dir"]).expanduser()).resolve()
        needs.writes(models_dir, "The models directory: pulls write weights there")
    else:
        needs.default_models_dir()
    needs.gpu = not needs.request.no_gpu
    _warn_without_token(given, settings, needs)
    return _grace(settings, NeuronConfig.shutdown_grace_s)


def _grace(settings: dict, default: float) -> float:
    """The drain a server's table sets (its shutdown_grace_s), which the unit's stop timeout must outlast."""
    grace = settings.get("shutdown_grace_s")
    return float(grace) if isinstance(grace, (int, float)) and not isinstance(grace, bool) else default


def _warn_without_token(given: dict, settings: dict, needs: _Needs) -> None:
    """A neuron beyond loopback with no token refuses to start: say so now, while it is easy to fix."""
    from neuron.shared.config import ConfigError, is_loopback, parse_listen

    listen = given["listen"][1] if "listen" in given else settings.get("listen")
    try:
        host = parse_listen(listen, "[neuron].listen")[0] if isinstance(listen, str) else "127.0.0.1"
    except ConfigError as exc:
        raise PlanError(f"--config: {exc}") from None
    if is_loopback(host) or "token_file" in given or "private_network" in given:
        return
    if any(settings.get(k) for k in ("token", "token_file", "private_network")):
        return
    env_file = Path(needs.env_file)
    try:
        if any(line.strip().startswith("CORTEX_NEURON_TOKEN=") for line in env_file.read_text().splitlines()):
            return
    except OSError:
        pass
    needs.warnings.append(f"the neuron listens on {host} but has no token: it will refuse to start. Put "
                          f"CORTEX_NEURON_TOKEN=... in {env_file} (mode 600), or pass --token-file")


def _gateway_needs(given: dict, needs: _Needs) -> float:
    """Note where the gateway writes pins (or, without a config, its local neuron's needs); return its drain."""
    from cortex_gateway.config import GatewayConfig
    from neuron.shared.config import NeuronConfig

    if "config_path" not in given:
        needs.warnings.append("no --config: the gateway runs a local neuron of its own on loopback (the README's "
                              "single-machine default); for a fleet, pass --config /etc/cortex/cortex.toml")
        needs.default_models_dir()
        needs.gpu = not needs.request.no_gpu
        return GatewayConfig.shutdown_grace_s + NeuronConfig.shutdown_grace_s
    config = Path(os.path.abspath(given["config_path"][1]))
    models_file = _toml_table(config, None).get("models_config")
    if isinstance(models_file, str):
        models_path = (config.parent / models_file).resolve()
        needs.writes(models_path.parent, "The models file's directory: pins are written beside it, atomically")
        if models_path.parent == config.parent and not needs.request.user_unit:
            needs.warnings.append(f"{models_path.name} sits beside {config.name}: pins need that directory writable, "
                                  f"which would let the service replace {config.name} (its keys) too; keep the "
                                  f"models file in {STATE_DIR} instead")
    _state_needs(config, needs)
    return _grace(_toml_table(config, "gateway"), GatewayConfig.shutdown_grace_s)


def _state_needs(config: Path, needs: _Needs) -> None:
    """The gateway's state_dir and a sqlite: file elsewhere made writable (cortex_cli.service_state decides)."""
    from cortex_cli.service_state import state_needs
    from neuron.shared.config import ConfigError

    try:
        writes, warnings = state_needs(_toml_table(config, None), config, needs.request)
    except (ConfigError, ValueError) as exc:
        raise PlanError(f"--config: {exc}") from None
    for path, why in writes:
        needs.writes(path, why)
    needs.warnings += warnings


def _absolute(path: Path | str) -> Path:
    """A path as the operator meant it where they typed it: a service starts in /, not here."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _toml_table(path: Path, table: str | None) -> dict:
    """One table of a config file (None: the top level), read only for what the unit depends on."""
    from neuron.shared.config import ConfigError, read_toml

    try:
        data = read_toml(Path(os.path.abspath(path)))
    except ConfigError as exc:
        raise PlanError(f"--config: {exc}; write it first: the unit depends on what it says") from None
    value = data if table is None else data.get(table, {})
    return value if isinstance(value, dict) else {}


def _default_env_file(request: ServiceRequest, name: str) -> Path:
    if request.user_unit:
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cortex" / name
    return Path("/etc/cortex") / name


def unit_file_name(name: str) -> str:
    name = name.removesuffix(".service")
    if not _UNIT_NAME.match(name):
        raise PlanError(f"--unit-name: {name!r} is not a unit name (letters, digits, : _ . -)")
    return f"{name}.service"


def cortex_executable() -> Path:
    """The installed `cortex` this command runs as: argv[0], else the script beside this Python, else PATH."""
    candidates = [Path(sys.argv[0]) if Path(sys.argv[0]).name == "cortex" else None,
                  Path(sys.executable).parent / "cortex"]  # a venv's scripts sit beside its python
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    if found := shutil.which("cortex"):
        return Path(found).resolve()
    raise PlanError("cannot find the installed `cortex` executable (not beside this Python, not on PATH); "
                    "install cortex-fleet with pip into the environment the service should run")


def script_interpreter(script: Path) -> Path | None:
    """The Python a console script runs on, links followed (also pip's `#!/bin/sh` + `'''exec'` form)."""
    try:
        with script.open("rb") as f:
            head = f.read(1024).decode(errors="replace").splitlines()[:2]
    except OSError:
        return None
    match = _SHEBANG.match(head[0]) if head else None
    if match and match.group(1) == "/bin/sh" and len(head) > 1:
        match = _SH_EXEC.match(head[1])
    return Path(match.group(1)).resolve() if match else None


def default_unit_dir(user_unit: bool) -> Path:
    if not user_unit:
        return SYSTEM_UNIT_DIR
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def install_unit(directory: Path, name: str, text: str) -> Path:
    """Write the unit atomically: systemd never reads half a file."""
    from neuron.shared.files import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    write_atomic(target, text, mode=0o644)  # unit files are read by tools running as any user (systemctl cat)
    return target


def next_steps(plan: Plan, request: ServiceRequest) -> list[str]:
    """The commands that take the installed unit to a running service."""
    ctl = "systemctl --user" if request.user_unit else "systemctl"
    steps = []
    if not request.user_unit:
        if not _user_exists(request.run_as):
            steps.append(f"useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin {request.run_as}")
        steps += [f"install -d -o {request.run_as} -g {request.run_as} {d}" for d in plan.must_exist if not d.exists()]
    env_file = Path(plan.spec.env_file)
    if request.command == "neuron" and not env_file.exists():  # the gateway's secrets are in cortex.toml
        steps.append(f"install -D -m 600 /dev/null {env_file}    # then add CORTEX_NEURON_TOKEN=... (HF_TOKEN=...)")
    steps += [f"{ctl} daemon-reload", f"{ctl} enable --now {plan.unit_name}",
              f"journalctl {'--user ' if request.user_unit else ''}-u {plan.unit_name} -f"]
    if request.user_unit:
        steps.append(f"loginctl enable-linger {pwd.getpwuid(os.getuid()).pw_name}    # run it with no session open")
    return steps


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
