"""The neuron's configuration: `neuron.toml`, overridden by command-line flags; and the pieces both
servers' configs share (the TOML reader, HOST:PORT, the loopback test).

Reading, validating and defaulting are separate steps, and every error names
the file and the key (through neuron.shared.config_fields, the one field checker),
so a typo never surfaces as a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from neuron.shared.config_fields import SERVER_LIMITS, ConfigError, Section
from neuron.shared.launch_flags import TABLES, command_flags, refusal
from neuron.shared.protocol import ADMISSION_LIMITS

DEFAULT_PORT = 13131


@dataclass(frozen=True)
class AdmissionLimits:
    """Per-model admission: how many run at once, how many may queue, how long one may wait."""

    max_in_flight: int = 1
    max_queue_depth: int = 32
    max_wait_s: float = 60.0


def default_models_dir() -> Path:
    return Path(os.environ.get("CORTEX_MODELS_DIR", "~/.cortex/models")).expanduser()


@dataclass
class NeuronConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise: an open neuron runs anyone's requests
    port: int = DEFAULT_PORT
    name: str = ""
    gpus: list[int] | None = None
    models_dir: Path = field(default_factory=default_models_dir)
    cpu_memory_mb: float | None = None
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    preload: list[dict] = field(default_factory=list)
    keepalive_s: float = 5.0
    shutdown_grace_s: float = 30.0
    max_body_mb: float = 64.0
    body_timeout_s: float = 30.0  # a client must send its whole body within this
    idle_timeout_s: float = 30.0  # a connection with no request in progress (or a half-sent head) this long is closed
    write_timeout_s: float = 60.0  # a stream whose client reads nothing this long is ended (its slot freed)
    # The gateway is one client with many streams: its cap is generous.
    max_connections_per_client: int = 1024
    token: str = field(default_factory=lambda: os.environ.get("CORTEX_NEURON_TOKEN", ""))
    model_roots: list[Path] = field(default_factory=list)  # loads by path are allowed under these (and models_dir)
    private_network: bool = False  # the operator's word that only trusted machines reach a tokenless port
    # External engines ([engines] in neuron.toml): name -> command (a path, or a command line), and how long
    # a start may take before it is given up (a vLLM start can take minutes).
    engines: dict[str, list[str]] = field(default_factory=dict)
    engine_start_timeout_s: float = 900.0
    demo: bool = False  # --demo: with no model in models_dir, write the demo model there and preload it

    def __post_init__(self):
        if not self.name:
            self.name = os.uname().nodename


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: localhost, 127.0.0.0/8 or ::1 (in any spelling).
    A name is not resolved: "127.example.com" is a name like any other, and not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: NeuronConfig) -> None:
    """Refuse to listen beyond loopback with no token, unless the operator says the network is private."""
    if is_loopback(config.host) or config.token or config.private_network:
        return
    raise ConfigError(f"refusing to listen on {config.host}:{config.port} with no token: anyone who can reach "
                      "that port could load models and run inference. Set a token (--token-file, "
                      "CORTEX_NEURON_TOKEN or [neuron] token) and give the gateway the same, or pass "
                      "--private-network if only trusted machines can reach this port")


def read_token_file(path: Path, where: str) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror})") from None
    if not token:
        raise ConfigError(f"{where}: {path} is empty")
    return token


def parse_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT (for example 0.0.0.0:{DEFAULT_PORT}), got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_gpus(value: str | list, where: str) -> list[int]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        gpus = [int(str(i).strip()) for i in items if str(i).strip()]
    except ValueError:
        raise ConfigError(f"{where}: expected GPU indices such as 0,1, got {value!r}") from None
    if any(g < 0 for g in gpus):
        raise ConfigError(f"{where}: GPU indices are >= 0, got {value!r}")
    return gpus


def read_toml(path: Path) -> dict:
    import tomlkit

    try:
        return tomlkit.parse(path.read_text()).unwrap()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomlkit.exceptions.TOMLKitError as exc:
        # A key given twice: KeyAlreadyPresent (no ParseError) before tomlkit 0.15.3, a ParseError since.
        twice = not isinstance(exc, tomlkit.exceptions.ParseError) or "already exists" in str(exc)
        raise ConfigError(f"{path}: not valid TOML: {exc}{'; give each key once per table' if twice else ''}") from None


# [neuron]'s numbers beyond those both servers have; see neuron.shared.config_fields for the rules.
NEURON_LIMITS = {**SERVER_LIMITS, "cpu_memory_mb": {"minimum": 1}}  # as --cpu-memory-mb


def config_from_file(path: Path) -> NeuronConfig:
    top = Section(read_toml(path), path)
    node = top.table("neuron")
    cfg = NeuronConfig()
    if (listen := node.opt_str("listen", expected="HOST:PORT")) is not None:
        cfg.host, cfg.port = parse_listen(listen, node.at("listen"))
    if (gpus := node.values.get("gpus")) is not None:
        cfg.gpus = parse_gpus(gpus, node.at("gpus"))
    cfg.name = node.opt_str("name") or cfg.name
    cfg.models_dir = node.opt_path("models_dir", cfg.models_dir)
    cfg.token = node.opt_str("token") or cfg.token
    if (token_file := node.opt_path("token_file")) is not None:
        cfg.token = read_token_file(token_file, node.at("token_file"))
    cfg.model_roots = [node.resolve(r) for r in node.opt_list("model_roots", "a list of paths")]
    cfg.private_network = node.opt_bool("private_network")
    cfg = replace(cfg, **node.numbers(NEURON_LIMITS, cfg))
    cfg.admission = replace(cfg.admission, **top.table("admission").numbers(ADMISSION_LIMITS, cfg.admission))
    cfg.engines, cfg.engine_start_timeout_s = _engines(top.table("engines"), cfg.engine_start_timeout_s)
    cfg.preload = _preload(top.values.get("preload", []), path)
    return cfg


def neuron_config_from_flags(config_path: Path | None = None, *, listen: str | None = None, name: str | None = None,
                             gpus: str | None = None, models_dir: Path | None = None,
                             cpu_memory_mb: float | None = None, token: str | None = None,
                             token_file: Path | None = None, model_roots: tuple[Path, ...] = (),
                             private_network: bool = False, demo: bool = False) -> NeuronConfig:
    """`cortex neuron`'s flags over its config file (or the defaults): a flag given wins, a model root
    adds to the file's; checked for exposure (no open port without a token) before it is returned."""
    config = config_from_file(config_path) if config_path else NeuronConfig()
    if listen:
        config.host, config.port = parse_listen(listen, "--listen")
    if gpus is not None:
        config.gpus = parse_gpus(gpus, "--gpus")
    config.name = name or config.name
    config.models_dir = models_dir or config.models_dir
    config.cpu_memory_mb = cpu_memory_mb or config.cpu_memory_mb
    config.token = token or config.token
    if token_file is not None:
        config.token = read_token_file(token_file, "--token-file")
    config.model_roots += [p.resolve() for p in model_roots]
    config.private_network = private_network or config.private_network
    config.demo = demo
    check_exposure(config)
    return config


ENGINE_KEYS = {"llama_server": "llama-server", "llama-server": "llama-server", "vllm": "vllm", "sglang": "sglang"}


def _engines(section: Section, start_timeout_s: float) -> tuple[dict[str, list[str]], float]:
    """[engines]: llama_server / vllm / sglang = "/path/to/it" (or a command line, or a list of words)."""
    import shlex

    out: dict[str, list[str]] = {}
    for key, value in section.values.items():
        if key == "start_timeout_s":
            continue
        if key not in ENGINE_KEYS:
            raise ConfigError(f"{section.at(key)}: expected one of llama_server, vllm, sglang or start_timeout_s")
        words = shlex.split(value) if isinstance(value, str) else value
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise section.fail(key, "a path, a command line or a list of words", value)
        flags = command_flags(words)  # checked as a load's engine_args are
        if (problem := refusal(ENGINE_KEYS[key], flags, first=len(words) - len(flags))) is not None:
            raise ConfigError(f"{section.at(key)}{problem}")
        out[ENGINE_KEYS[key]] = words
    return out, section.opt_float("start_timeout_s", start_timeout_s, above=0)


def _preload(items, path: Path) -> list[dict]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("model"), str)
                                              for i in items):
        raise ConfigError(f"{path}: [[preload]]: each entry needs model = \"id or path\"")
    for i, item in enumerate(items):
        args, backend = item.get("engine_args"), item.get("backend")
        if isinstance(args, list) and backend in TABLES and (problem := refusal(backend, args)) is not None:
            raise ConfigError(f"{path}: [[preload]] #{i + 1}.engine_args{problem}")
    return items
