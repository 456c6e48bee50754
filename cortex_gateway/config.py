"""Gateway configuration: `cortex.toml` and the models file it names.

Locating, reading and validating are separate steps. Every error names the
file, the key and what was expected. Writes (a pin, a new neuron) go through
tomlkit, so the user's comments and layout survive, and land atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from cortex_gateway.auth import AuthSettings
from neuron.shared.config import ConfigError, NeuronConfig, parse_listen, read_toml
from neuron.shared.launch_flags import refusal
from neuron.shared.protocol import BACKENDS, EXTERNAL_ENGINES

STRATEGIES = ("lru", "priority")
# The gateway is one client address to every neuron, and a neuron closes connections past its
# max_connections_per_client (NeuronConfig's default) before reading a byte: the relays to one node stay
# below that, with this many more kept for the gateway's own polls, loads and admin calls to it.
CONTROL_CONNECTIONS_PER_NODE = 32
_URL = re.compile(r"^https?://[^/\s]+(/.*)?$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


@dataclass
class NeuronSpec:
    name: str
    endpoint: str
    token: str | None = None  # the neuron's shared token, sent as a bearer token


@dataclass
class ModelProfile:
    id: str
    path: str | None = None
    source: str | None = None
    backend: str = "auto"
    pinned_on: list[str] = field(default_factory=list)
    priority: int = 100
    devices: list = field(default_factory=list)
    context_size: int | None = None
    engine_args: list[str] = field(default_factory=list)  # for an external engine backend (llama-server, vllm...)

    @property
    def load_target(self) -> str:
        """What to ask a neuron to load: a path, a hub id, or the id in its models dir."""
        return self.path or self.source or self.id

    def load_spec(self) -> dict:
        spec = {"model": self.load_target, "backend": self.backend}
        if self.devices:
            spec["devices"] = self.devices
        if self.context_size:
            spec["context_size"] = self.context_size
        if self.engine_args:
            spec["engine_args"] = self.engine_args
        return spec


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"  # loopback unless the config says otherwise
    port: int = 31313
    metrics_host: str = "127.0.0.1"  # the metrics port has no keys
    metrics_port: int = 31314
    neurons: list[NeuronSpec] = field(default_factory=list)
    strategy: str = "lru"
    models: dict[str, ModelProfile] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    poll_interval_s: float = 2.0
    poll_timeout_s: float = 5.0  # a neuron that does not answer a poll within this has failed it
    down_after: int = 3
    load_timeout_s: float = 600.0
    keepalive_s: float = 5.0
    # a stream silent this long (a cold load, a queue, a prefill) gets an event that clients count as progress
    progress_interval_s: float = 60.0
    max_body_mb: float = 32.0
    body_timeout_s: float = 30.0
    # a neuron silent this long mid-answer (or for a whole non-streaming answer) fails the request
    upstream_read_timeout_s: float = 600.0
    idle_timeout_s: float = 30.0  # a connection with no request in progress (or a half-sent head) this long is closed
    write_timeout_s: float = 60.0  # a stream whose client reads nothing this long is ended (the node's slot freed)
    max_connections_per_client: int = 256
    max_connections_per_node: int = 512  # relays open to one neuron at once; more requests wait for a connection
    responses_store_max: int = 1000  # stored Responses (previous_response_id, GET); 0 keeps none
    responses_store_ttl_s: float = 3600.0  # a stored response is forgotten this long after it was made
    responses_store_max_mb: float = 256.0  # all stored Responses, in JSON bytes; the least recently used go first
    responses_store_max_response_mb: float = 16.0  # one stored response (its whole conversation), in JSON bytes
    hosted_tools: str = "drop"  # Responses hosted tools (web_search...): "drop" (not offered, said so) or "refuse"
    auth: AuthSettings = field(default_factory=AuthSettings)
    config_path: Path | None = None
    models_path: Path | None = None
    keys_path: Path | None = None

    def resolve_alias(self, model: str) -> str:
        return self.aliases.get(model, model)


def _where(path: Path, section: str, key: str) -> str:
    return f"{path}: {section}.{key}" if section else f"{path}: {key}"


def _get(table: dict, key: str, kind, path: Path, section: str, expected: str, default=None):
    value = table.get(key, default)
    if value is None:
        return default
    bad_bool = isinstance(value, bool) and kind is not bool
    if bad_bool or not isinstance(value, kind):
        raise ConfigError(f"{_where(path, section, key)}: expected {expected}, got {value!r}")
    return value


def load_config(path: Path) -> GatewayConfig:
    """Read and validate `cortex.toml` (and its models file)."""
    data = read_toml(path)
    cfg = GatewayConfig(config_path=path)
    gw = _get(data, "gateway", dict, path, "", "a [gateway] table", {})
    if (listen := _get(gw, "listen", str, path, "[gateway]", "HOST:PORT")) is not None:
        cfg.host, cfg.port = parse_listen(listen, _where(path, "[gateway]", "listen"))
    if (listen := _get(gw, "metrics_listen", str, path, "[gateway]", "HOST:PORT")) is not None:
        cfg.metrics_host, cfg.metrics_port = parse_listen(listen, _where(path, "[gateway]", "metrics_listen"))
    for key in ("poll_interval_s", "poll_timeout_s", "load_timeout_s", "keepalive_s", "max_body_mb", "body_timeout_s",
                "upstream_read_timeout_s", "idle_timeout_s", "responses_store_ttl_s", "write_timeout_s",
                "progress_interval_s"):
        value = _get(gw, key, (int, float), path, "[gateway]", "a number of seconds")
        if value is not None:
            if value <= 0:
                raise ConfigError(f"{_where(path, '[gateway]', key)}: must be > 0, got {value!r}")
            setattr(cfg, key, float(value))
    cfg.down_after = _get(gw, "down_after", int, path, "[gateway]", "a number of polls", cfg.down_after)
    cfg.max_connections_per_client = _get(gw, "max_connections_per_client", int, path, "[gateway]",
                                          "a number of connections", cfg.max_connections_per_client)
    cfg.max_connections_per_node = _node_connections(gw, path)
    cfg.responses_store_max = _get(gw, "responses_store_max", int, path, "[gateway]",
                                   "a number of responses (0: keep none)", cfg.responses_store_max)
    if cfg.responses_store_max < 0:
        raise ConfigError(f"{_where(path, '[gateway]', 'responses_store_max')}: must be >= 0, "
                          f"got {cfg.responses_store_max!r}")
    _store_bytes(cfg, gw, path)
    cfg.hosted_tools = _get(gw, "hosted_tools", str, path, "[gateway]", '"drop" or "refuse"', cfg.hosted_tools)
    if cfg.hosted_tools not in ("drop", "refuse"):
        raise ConfigError(f'{_where(path, "[gateway]", "hosted_tools")}: expected "drop" or "refuse", '
                          f"got {cfg.hosted_tools!r}")
    neuron_token = _get(gw, "neuron_token", str, path, "[gateway]", "a token for every neuron")
    cfg.neurons = _neurons(data.get("neurons", []), path, neuron_token)
    eviction = _get(data, "eviction", dict, path, "", "an [eviction] table", {})
    cfg.strategy = _get(eviction, "strategy", str, path, "[eviction]", "lru or priority", "lru")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"{_where(path, '[eviction]', 'strategy')}: expected \"lru\" or \"priority\", "
                          f"got {cfg.strategy!r}")
    auth = _get(data, "auth", dict, path, "", "an [auth] table", {})
    cfg.auth = _auth(auth, path)
    if keys_file := auth.get("keys_file"):
        cfg.keys_path = (path.parent / keys_file).expanduser()
    models_file = _get(data, "models_config", str, path, "", "a path to the models file")
    if models_file:
        cfg.models_path = (path.parent / models_file).resolve()
        cfg.models, cfg.aliases = load_models_file(cfg.models_path)
    return cfg


def _node_connections(gw: dict, path: Path) -> int:
    """The bound on connections to one neuron: at least 1, and below the neuron's own per-client cap."""
    most = NeuronConfig.max_connections_per_client - CONTROL_CONNECTIONS_PER_NODE
    value = _get(gw, "max_connections_per_node", int, path, "[gateway]", "a number of connections",
                 GatewayConfig.max_connections_per_node)
    if not 1 <= value <= most:
        raise ConfigError(f"{_where(path, '[gateway]', 'max_connections_per_node')}: expected 1 to {most}, got "
                          f"{value!r}: a neuron closes connections past its max_connections_per_client "
                          f"({NeuronConfig.max_connections_per_client} by default) from one address, and the "
                          f"gateway keeps {CONTROL_CONNECTIONS_PER_NODE} more per node for polls and loads")
    return value


def _store_bytes(cfg: GatewayConfig, gw: dict, path: Path) -> None:
    """The Responses store's bounds in MiB: both > 0, one response no larger than the whole store."""
    for key in ("responses_store_max_mb", "responses_store_max_response_mb"):
        value = _get(gw, key, (int, float), path, "[gateway]", "a number of MiB")
        if value is not None:
            if value <= 0:
                raise ConfigError(f"{_where(path, '[gateway]', key)}: must be > 0, got {value!r}")
            setattr(cfg, key, float(value))
    if cfg.responses_store_max_response_mb > cfg.responses_store_max_mb:
        raise ConfigError(f"{_where(path, '[gateway]', 'responses_store_max_response_mb')}: "
                          f"{cfg.responses_store_max_response_mb:g} is more than the whole store "
                          f"(responses_store_max_mb = {cfg.responses_store_max_mb:g}); lower it or raise that")


def _auth(auth: dict, path: Path) -> AuthSettings:
    lists = {}
    for key in ("keys", "admin_keys"):
        values = _get(auth, key, list, path, "[auth]", "a list of keys", [])
        if not all(isinstance(k, str) and len(k) >= 8 for k in values):
            raise ConfigError(f"{_where(path, '[auth]', key)}: expected strings of at least 8 characters")
        lists[key] = list(values)
    names: dict[str, str] = {}
    if keys_file := _get(auth, "keys_file", str, path, "[auth]", "a path to a file of keys"):
        names = key_names((path.parent / keys_file).expanduser(), path)
        lists["keys"] += list(names)
    limits = {k: _get(auth, k, int, path, "[auth]", "a whole number (0: no limit)", 0)
              for k in ("requests_per_minute", "max_concurrent")}
    if any(v < 0 for v in limits.values()):
        raise ConfigError(f"{path}: [auth]: requests_per_minute and max_concurrent must be >= 0")
    return AuthSettings(tuple(lists["keys"]), tuple(lists["admin_keys"]), **limits,
                        names={k: n for k, n in names.items() if n})


def key_names(keys_path: Path, config_path: Path) -> dict[str, str]:
    """The keys of a keys file, each with its name: the comment on its line (`sk-...  # alice`), if any.
    The name is what the access log shows for the key."""
    try:
        lines = keys_path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{config_path}: [auth].keys_file: cannot read {keys_path} ({exc.strerror})") from None
    pairs = [(key.strip(), name.strip()) for key, _, name in (line.partition("#") for line in lines)]
    pairs = [(k, n) for k, n in pairs if k]
    short = [i + 1 for i, (k, _) in enumerate(pairs) if len(k) < 8]
    if short:
        raise ConfigError(f"{keys_path}: key #{short[0]} is shorter than 8 characters")
    return dict(pairs)


def files_readable_by_others(config: GatewayConfig) -> list[Path]:
    """Config files holding secrets whose mode lets group or others read them."""
    paths = [p for p in (config.config_path, config.keys_path) if p is not None and p.exists()]
    return [p for p in paths if p.stat().st_mode & 0o077]


def _neurons(items, path: Path, default_token: str | None = None) -> list[NeuronSpec]:
    if not isinstance(items, list):
        raise ConfigError(f"{path}: neurons: expected [[neurons]] tables")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"[[neurons]] #{i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: {where}: expected a table with name and endpoint")
        name = _get(item, "name", str, path, where, "a node name")
        endpoint = _get(item, "endpoint", str, path, where, "an http(s) URL")
        if not name or not _NAME.match(name):
            raise ConfigError(f"{_where(path, where, 'name')}: expected a name of letters, digits, -, _ or .")
        if not endpoint or not _URL.match(endpoint):
            raise ConfigError(f"{_where(path, where, 'endpoint')}: expected an http(s) URL such as "
                              f"http://10.0.0.5:13131, got {endpoint!r}")
        if name in seen:
            raise ConfigError(f"{_where(path, where, 'name')}: {name!r} is used by another neuron")
        seen.add(name)
        token = _get(item, "token", str, path, where, "the neuron's token") or default_token
        out.append(NeuronSpec(name, endpoint.rstrip("/"), token))
    return out


def load_models_file(path: Path) -> tuple[dict[str, ModelProfile], dict[str, str]]:
    data = read_toml(path)
    models: dict[str, ModelProfile] = {}
    items = data.get("models", [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: models: expected [[models]] tables")
    for i, item in enumerate(items):
        profile = _profile(item, path, f"[[models]] #{i + 1}")
        if profile.id in models:
            raise ConfigError(f"{path}: [[models]] #{i + 1}.id: {profile.id!r} is defined twice")
        models[profile.id] = profile
    aliases = _get(data, "aliases", dict, path, "", "an [aliases] table", {})
    for alias, target in aliases.items():
        if not isinstance(target, str):
            raise ConfigError(f"{_where(path, '[aliases]', alias)}: expected a model id, got {target!r}")
    return models, dict(aliases)


def _profile(item, path: Path, where: str) -> ModelProfile:
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: {where}: expected a table")
    model_id = _get(item, "id", str, path, where, "a model id")
    if not model_id:
        raise ConfigError(f"{_where(path, where, 'id')}: required")
    backend = _get(item, "backend", str, path, where, ", ".join(BACKENDS), "auto")
    if backend not in BACKENDS:
        raise ConfigError(f"{_where(path, where, 'backend')}: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    engine_args = _get(item, "engine_args", list, path, where, "a list of strings", [])
    if not all(isinstance(a, str) for a in engine_args) or (engine_args and backend not in EXTERNAL_ENGINES):
        raise ConfigError(f"{_where(path, where, 'engine_args')}: a list of strings, for a backend of "
                          f"{', '.join(EXTERNAL_ENGINES)}")
    if engine_args and (problem := refusal(backend, engine_args)) is not None:  # the neuron would refuse the load
        raise ConfigError(f"{_where(path, where, 'engine_args')}{problem}")
    pinned = _get(item, "pinned_on", list, path, where, "a list of node names", [])
    if not all(isinstance(p, str) for p in pinned):
        raise ConfigError(f"{_where(path, where, 'pinned_on')}: expected a list of node names")
    return ModelProfile(
        id=model_id, path=_get(item, "path", str, path, where, "a path"),
        source=_get(item, "source", str, path, where, "a hub id such as org/name"), backend=backend,
        pinned_on=list(pinned), priority=_get(item, "priority", int, path, where, "an integer", 100),
        devices=list(_get(item, "devices", list, path, where, "a list of device indices", [])),
        context_size=_get(item, "context_size", int, path, where, "a number of tokens"), engine_args=list(engine_args),
    )


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it: never a half-written config."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def set_pin(models_path: Path, model_id: str, node: str, pinned: bool) -> None:
    """Add or remove `node` in the model's `pinned_on`, keeping every comment in the file."""
    doc = tomlkit.parse(models_path.read_text()) if models_path.exists() else tomlkit.document()
    tables = doc.get("models")
    if tables is None:
        tables = tomlkit.aot()
        doc["models"] = tables
    table = next((t for t in tables if t.get("id") == model_id), None)
    if table is None:
        if not pinned:
            return
        table = tomlkit.table()
        table["id"] = model_id
        tables.append(table)
    current = [str(n) for n in table.get("pinned_on", [])]
    wanted = sorted(set(current) | {node}) if pinned else [n for n in current if n != node]
    if wanted != current:
        table["pinned_on"] = wanted
    write_atomically(models_path, tomlkit.dumps(doc))
