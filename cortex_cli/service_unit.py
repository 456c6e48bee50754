"""systemd units for `cortex neuron` and `cortex serve`: a typed spec in, the unit file's text out.

Pure: nothing here reads the machine or writes a file (`service_plan.py` turns a command line into
a `UnitSpec` and installs the text). Every directive the unit carries has a comment saying why, so
an operator who reads the installed file can tell what each one protects and what it costs.

Quoting follows systemd.service(5), "Command lines": `%` starts a specifier (`%%` is a percent
sign), `$` in an argument substitutes a variable (`$$` is a dollar sign), and a word with spaces
or quotes is double-quoted with C escapes. systemd refuses quotes and backslashes in the
executable's own path, so `exec_path` refuses them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STATE_DIR = "/var/lib/cortex"  # StateDirectory=cortex on a system unit
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# systemd's strict user names (user-util.c, valid_user_group_name): what useradd makes and User= reads
# as a name, never a specifier (%h), a number (a UID) or the start of another directive.
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,30}$")

# What a CUDA or NVML process opens. Named paths are checked when the unit starts (a node created
# later, as nvidia-uvm often is, would be missed), so each is also allowed by its device group from
# /proc/devices: the group name of the GPUs' major 195 differs between driver generations.
NVIDIA_DEVICES: tuple[tuple[str, str, str], ...] = (
    ("/dev/nvidiactl", "rw", "The driver's control node: NVML and every CUDA context open it"),
    ("/dev/nvidia-uvm", "rw", "Unified memory: CUDA allocates through it"),
    ("/dev/nvidia-uvm-tools", "rw", "Its tools interface, for profilers (CUPTI, Nsight)"),
    ("char-nvidia-frontend", "rw", "/dev/nvidia0..N and nvidiactl (major 195), as older drivers name it"),
    ("char-nvidia", "rw", "The same major, as current drivers name it"),
    ("char-nvidia-uvm", "rw", "nvidia-uvm's own major, whenever its nodes are created"),
    ("char-nvidia-caps", "r", "MIG: a GPU instance is granted by reading /dev/nvidia-caps/*"),
)


class UnitError(ValueError):
    """A value systemd could not carry in a unit file; the message says which and why."""


@dataclass(frozen=True)
class UnitSpec:
    """Everything a cortex unit varies by; `render_unit` turns it into the file's text."""

    description: str
    argv: tuple[str, ...]  # the absolute path of `cortex`, the command, its options
    env_file: str  # tokens and keys: read by systemd (as root) before the server starts
    user_unit: bool = False  # a `systemctl --user` unit: no User=, no filesystem sandbox
    run_as: str = "cortex"
    gpu: bool = False  # allow the NVIDIA device nodes
    write_paths: tuple[tuple[str, str], ...] = ()  # (path, why) written beyond the state directory
    state_dirs: tuple[str, ...] = ("cortex",)  # under /var/lib, made and owned for run_as by systemd
    environment: tuple[tuple[str, str], ...] = ()
    protect_home: str = "yes"  # "read-only" when cortex itself or a path it needs lives under /home
    timeout_stop_s: int = 120
    restart_sec: int = 5


def render_unit(spec: UnitSpec) -> str:
    """The text of the unit file for `spec`."""
    blocks = [_unit_section(spec), _service_section(spec), _unprivileged_sandbox(spec)]
    if not spec.user_unit:
        blocks += [_filesystem_sandbox(spec), _devices(spec)]
    blocks.append(_install_section(spec))
    return "\n".join(line for block in blocks for line in block) + "\n"


def exec_path(path: str) -> str:
    """The executable's word on ExecStart=: absolute, no quotes or backslashes (systemd refuses them)."""
    if not path.startswith("/"):
        raise UnitError(f"{path!r}: ExecStart= needs an absolute path")
    if any(c in path for c in "\"'\\") or _CONTROL.search(path):
        raise UnitError(f"{path!r}: systemd refuses quotes, backslashes and control characters in the "
                        "executable's path; install cortex somewhere with a plain path (e.g. /opt/cortex)")
    return _quoted(path.replace("%", "%%"))


def exec_arg(word: str) -> str:
    """One argument on ExecStart=, passed to the program exactly as given."""
    if _CONTROL.search(word):
        raise UnitError(f"{word!r}: an option value in a unit cannot hold control characters (a newline "
                        "would end the directive)")
    return _quoted(word.replace("%", "%%").replace("$", "$$"))


def user_name(name: str) -> str:
    """The value of User= and Group=, which systemd takes unquoted: a plain user name or nothing."""
    if not _USER_NAME.match(name):
        raise UnitError(f"--run-as: {name!r} is not a user name: a letter or _, then letters, digits, _ or -, "
                        "at most 31 in all (as useradd makes them); pick one such as cortex")
    return name


def path_word(path: str) -> str:
    """A path in a space-separated list directive (ReadWritePaths=, Environment=)."""
    if _CONTROL.search(path):
        raise UnitError(f"{path!r}: a path in a unit cannot hold control characters")
    return _quoted(path.replace("%", "%%"))


def _quoted(word: str) -> str:
    if _PLAIN.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unit_section(spec: UnitSpec) -> list[str]:
    lines = ["# Written by `cortex service`; render it again rather than editing it by hand.",
             "[Unit]", f"Description={spec.description}"]
    if not spec.user_unit:
        lines += ["# Wait for addresses to be configured: a server told to listen on 10.0.0.5 cannot bind",
                  "# before the interface has that address. nvidia-persistenced, where installed, creates",
                  "# the device nodes and keeps the driver loaded between processes.",
                  "After=network-online.target nvidia-persistenced.service",
                  "Wants=network-online.target"]
    lines += ["# Five failed starts in five minutes and systemd stops trying: a broken config or driver",
              "# is then plain in `systemctl status`, instead of a restart loop.",
              "StartLimitIntervalSec=300", "StartLimitBurst=5", ""]
    return lines


def _service_section(spec: UnitSpec) -> list[str]:
    argv = " ".join([exec_path(spec.argv[0]), *(exec_arg(a) for a in spec.argv[1:])])
    lines = ["[Service]",
             "# exec: the start fails at once if the executable cannot run, rather than later.",
             "Type=exec",
             f"ExecStart={argv}",
             "# Tokens and keys (CORTEX_NEURON_TOKEN=..., HF_TOKEN=...) live here, never on the command",
             "# line, where every user sees them in ps. systemd reads the file as root before the",
             "# server starts, so it can be root's alone (chmod 600). \"-\": the file is optional.",
             f"EnvironmentFile=-{_env_file(spec.env_file)}",
             "# Log lines reach the journal as they are written.",
             "Environment=PYTHONUNBUFFERED=1"]
    lines += [f"Environment={path_word(f'{key}={value}')}" for key, value in spec.environment]
    if not spec.user_unit:
        user = user_name(spec.run_as)
        lines += ["# A user of its own: the server cannot touch other services' files, and systemd hands",
                  f"# it {STATE_DIR} (models, caches). Create it once: useradd --system --home-dir",
                  f"# {STATE_DIR} --shell /usr/sbin/nologin {user}",
                  f"User={user}", f"Group={user}",
                  f"StateDirectory={' '.join(spec.state_dirs)}"]
    lines += ["# SIGTERM is the servers' graceful stop: stop accepting, let in-flight requests finish,",
              "# then (a neuron) unload every model. TimeoutStopSec is that drain plus the unload of",
              "# big models, which can take a minute; only then does systemd send SIGKILL.",
              "KillSignal=SIGTERM",
              "# mixed: SIGTERM to the server alone, which stops what it started itself (cortex serve's",
              "# local neuron) after its own drain; anything still running after that is killed.",
              "KillMode=mixed",
              f"TimeoutStopSec={spec.timeout_stop_s}",
              "# A crash or a failed start is retried; a clean stop (exit 0) is not. Exit status 2 is a",
              "# usage error (a bad flag or config value), which no restart can fix.",
              "Restart=on-failure",
              f"RestartSec={spec.restart_sec}",
              "RestartPreventExitStatus=2"]
    if not spec.user_unit:
        lines += ["# Connections are files: the servers raise their soft limit to this hard limit at start,",
                  "# whatever the distribution's default is.",
                  "LimitNOFILE=524288"]
    return lines


def _env_file(path: str) -> str:
    if _CONTROL.search(path) or any(c in path for c in " \t\"'\\"):
        raise UnitError(f"{path!r}: an EnvironmentFile= path cannot hold spaces, quotes or backslashes")
    if not path.startswith("/"):
        raise UnitError(f"{path!r}: EnvironmentFile= needs an absolute path")
    return path.replace("%", "%%")


def _unprivileged_sandbox(spec: UnitSpec) -> list[str]:
    lines = ["",
             "# Sandbox, first what needs no privileges (seccomp and prctl): no setuid escalation, no",
             "# sockets but IP for clients and the fleet and Unix for local IPC (no raw or netlink), no",
             "# new namespaces, no realtime scheduling, no setuid files.",
             "NoNewPrivileges=yes",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
             "RestrictNamespaces=yes",
             "RestrictRealtime=yes",
             "RestrictSUIDSGID=yes",
             "LockPersonality=yes",
             "SystemCallArchitectures=native",
             "# System calls no server needs (setting the clock, mounts, modules, reboot, swap, raw I/O,",
             "# ptrace, obsolete ones) fail with EPERM. Not an allow-list (SystemCallFilter=@system-service):",
             "# one call the CUDA driver makes and the list lacks would fail a load.",
             "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
             "SystemCallErrorNumber=EPERM",
             "# Pulled weights are not world-readable.",
             "UMask=0027",
             "# Not set on purpose: MemoryDenyWriteExecute= (CUDA's JIT and libffi write code), and",
             "# PrivateUsers= (a GPU node owned by a group such as video would no longer open)."]
    if spec.user_unit:
        # A user manager cannot install device filters, and its mount namespaces need unprivileged
        # user namespaces, which some distributions forbid: the unit would then not start at all.
        lines += ["# A user unit stops here: the filesystem and device sandbox needs a system unit",
                  "# (cortex service ... without --user)."]
    return lines + [""]


def _filesystem_sandbox(spec: UnitSpec) -> list[str]:
    lines = ["# The filesystem: the server reads the whole system but writes only its state directory",
             "# and the paths below, so a compromised server cannot change binaries, /etc, or other",
             "# services' data.",
             "ProtectSystem=strict"]
    for path, why in spec.write_paths:
        lines += [f"# {why} (it must exist, writable by {spec.run_as}).", f"ReadWritePaths={path_word(path)}"]
    home_why = ("read-only, because cortex or a path it reads lives under one" if spec.protect_home != "yes"
                else "/home, /root and /run/user are not there at all")
    lines += [f"# Home directories: {home_why}.",
              f"ProtectHome={spec.protect_home}",
              "PrivateTmp=yes",
              "PrivateMounts=yes",
              "# No capabilities at all: GPUs, ports above 1024 and the models need none.",
              "CapabilityBoundingSet=",
              "AmbientCapabilities=",
              "# The kernel's knobs, modules, logs, clock and cgroups are read-only or out of reach. Load",
              "# nvidia-uvm at boot (nvidia-persistenced, or nvidia-modprobe -u -c=0): this unit cannot.",
              "ProtectKernelTunables=yes",
              "ProtectKernelModules=yes",
              "ProtectKernelLogs=yes",
              "ProtectControlGroups=yes",
              "ProtectClock=yes",
              "ProtectHostname=yes",
              "# Other users' processes are hidden. Not ProcSubset=pid: NVML reads /proc/driver/nvidia.",
              "ProtectProc=invisible",
              "RemoveIPC=yes",
              ""]
    return lines


def _devices(spec: UnitSpec) -> list[str]:
    lines = ["# Devices: only the pseudo-devices (/dev/null, /dev/urandom...)"
             + (" and the NVIDIA GPUs." if spec.gpu else "; this server needs no GPU."),
             "DevicePolicy=closed"]
    if not spec.gpu:
        return lines + ["PrivateDevices=yes", ""]
    lines.append("# Not PrivateDevices=: its private /dev holds no GPU nodes.")
    for node, access, why in NVIDIA_DEVICES:
        lines += [f"# {why}", f"DeviceAllow={node} {access}"]
    return lines + [""]


def _install_section(spec: UnitSpec) -> list[str]:
    target = "default.target" if spec.user_unit else "multi-user.target"
    return ["[Install]", f"WantedBy={target}"]
