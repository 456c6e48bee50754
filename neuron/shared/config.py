"""The neuron's configuration: `neuron.toml`, overridden by command-line flags.

Reading, validating and defaulting are separate steps, and every error names
the file and the key, so a typo never surfaces as a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from neuron.shared.launch_flags import TABLES, command_flags, refusal

DEFAULT_PORT = 13131


@dataclass(frozen=True)
class AdmissionLimits:
    """Per-model admission: how many run at once, how many may queue, how long one may wait."""

    max_in_flight: int = 1
    max_queue_depth: int = 32
    max_wait_s: float = 60.0


class ConfigError(ValueError):
    """A bad configuration value; the message names the file and key."""


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

    def __post_init__(self):
        if not self.name:
            self.name = os.uname().nodename


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(config: NeuronConfig) -> None:
    """Refuse to listen beyond loopback with no token, unless the operator says the network is private."""
    if config.host in LOOPBACK or config.host.startswith("127.") or config.token or config.private_network:
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
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _expect(section: dict, key: str, kind: type | tuple, where: str, expected: str):
    value = section.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")
    return value


def config_from_file(path: Path) -> NeuronConfig:
    data = read_toml(path)
    cfg = NeuronConfig()
    node = data.get("neuron", {})
    where = f"{path}: [neuron]"
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: [neuron] must be a table")
    if (listen := _expect(node, "listen", str, where, "HOST:PORT")) is not None:
        cfg.host, cfg.port = parse_listen(listen, f"{where}.listen")
    cfg.name = _expect(node, "name", str, where, "a string") or cfg.name
    if (gpus := node.get("gpus")) is not None:
        cfg.gpus = parse_gpus(gpus, f"{where}.gpus")
    if (models_dir := _expect(node, "models_dir", str, where, "a path")) is not None:
        cfg.models_dir = (path.parent / Path(models_dir).expanduser()).resolve()
    cfg.cpu_memory_mb = _expect(node, "cpu_memory_mb", (int, float), where, "a number of MiB")
    cfg.token = _expect(node, "token", str, where, "a string") or cfg.token
    if (token_file := _expect(node, "token_file", str, where, "a path")) is not None:
        cfg.token = read_token_file(path.parent / token_file, f"{where}.token_file")
    roots = _expect(node, "model_roots", list, where, "a list of paths") or []
    if not all(isinstance(r, str) for r in roots):
        raise ConfigError(f"{where}.model_roots: expected a list of paths, got {roots!r}")
    cfg.model_roots = [(path.parent / Path(r).expanduser()).resolve() for r in roots]
    cfg.max_connections_per_client = (_expect(node, "max_connections_per_client", int, where, "an integer")
                                      or cfg.max_connections_per_client)
    cfg.private_network = bool(_expect(node, "private_network", bool, where, "true or false"))
    for key in ("keepalive_s", "shutdown_grace_s", "max_body_mb", "body_timeout_s", "idle_timeout_s",
                "write_timeout_s"):
        if (v := _expect(node, key, (int, float), where, "a number")) is not None:
            setattr(cfg, key, float(v))
    if cfg.write_timeout_s <= 0:
        raise ConfigError(f"{where}.write_timeout_s: must be > 0 seconds, got {cfg.write_timeout_s:g}")
    cfg.admission = _admission(data.get("admission", {}), f"{path}: [admission]")
    cfg.engines, timeout = _engines(data.get("engines", {}), f"{path}: [engines]")
    cfg.engine_start_timeout_s = timeout or cfg.engine_start_timeout_s
    cfg.preload = _preload(data.get("preload", []), path)
    return cfg


def _admission(section: dict, where: str) -> AdmissionLimits:
    d = AdmissionLimits()
    return AdmissionLimits(
        max_in_flight=_expect(section, "max_in_flight", int, where, "an integer") or d.max_in_flight,
        max_queue_depth=_default(_expect(section, "max_queue_depth", int, where, "an integer"), d.max_queue_depth),
        max_wait_s=_default(_expect(section, "max_wait_s", (int, float), where, "seconds"), d.max_wait_s),
    )


ENGINE_KEYS = {"llama_server": "llama-server", "llama-server": "llama-server", "vllm": "vllm", "sglang": "sglang"}


def _engines(section, where: str) -> tuple[dict[str, list[str]], float | None]:
    """[engines]: llama_server / vllm / sglang = "/path/to/it" (or a command line, or a list of words)."""
    import shlex

    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a table")
    out: dict[str, list[str]] = {}
    timeout = _expect(section, "start_timeout_s", (int, float), where, "seconds")
    for key, value in section.items():
        if key == "start_timeout_s":
            continue
        if key not in ENGINE_KEYS:
            raise ConfigError(f"{where}.{key}: expected one of llama_server, vllm, sglang or start_timeout_s")
        words = shlex.split(value) if isinstance(value, str) else value
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise ConfigError(f"{where}.{key}: expected a path, a command line or a list of words, got {value!r}")
        flags = command_flags(words)  # checked as a load's engine_args are
        if (problem := refusal(ENGINE_KEYS[key], flags, first=len(words) - len(flags))) is not None:
            raise ConfigError(f"{where}.{key}{problem}")
        out[ENGINE_KEYS[key]] = words
    return out, None if timeout is None else float(timeout)


def _default(value, fallback):
    return fallback if value is None else value


def _preload(items, path: Path) -> list[dict]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("model"), str)
                                              for i in items):
        raise ConfigError(f"{path}: [[preload]]: each entry needs model = \"id or path\"")
    for i, item in enumerate(items):
        args, backend = item.get("engine_args"), item.get("backend")
        if isinstance(args, list) and backend in TABLES and (problem := refusal(backend, args)) is not None:
            raise ConfigError(f"{path}: [[preload]] #{i + 1}.engine_args{problem}")
    return items
