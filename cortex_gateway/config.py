"""Gateway configuration: `cortex.toml` and the models file it names.

Locating, reading and validating are separate steps. Every error names the
file, the key and what was expected. Writes (a pin, a new neuron) go through
tomlkit, so the user's comments and layout survive, and land atomically.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomlkit

from cortex_gateway.auth import AuthSettings
from cortex_gateway.state_db.url import read_state_url
from neuron.shared.config import NeuronConfig, parse_listen, read_toml
from neuron.shared.config_fields import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    SERVER_LIMITS,
    ConfigError,
    Section,
)
from neuron.shared.connections import free_port
from neuron.shared.errors import ApiError
from neuron.shared.files import write_atomic
from neuron.shared.launch_flags import refusal
from neuron.shared.protocol import BACKENDS, EXTERNAL_ENGINES
from neuron.shared.speculative import DRAFT_MODEL_BACKENDS, SPECULATIVE_BACKENDS, SpecConfig

DEFAULT_CONFIG = Path("~/.cortex/cortex.toml")
STRATEGIES = ("lru", "priority")
CONTEXT_SIZE = {"minimum": 16, "maximum": 1 << 22}  # a profile's context_size: the bounds a load has
# The gateway is one client address to every neuron, and a neuron closes connections past its
# max_connections_per_client (NeuronConfig's default) before reading a byte: the relays to one node stay
# below that, with this many more kept for the gateway's own polls, loads and admin calls to it.
CONTROL_CONNECTIONS_PER_NODE = 32
_URL = re.compile(r"^https?://[^/\s]+(/.*)?$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def default_state_dir() -> Path:
    return Path(os.environ.get("CORTEX_STATE_DIR", "~/.cortex/state")).expanduser()


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
    speculative: dict | None = None  # prompt lookup on the node (neuron.shared.speculative), checked here
    # Unloaded after this long without a request through the gateway; 0: never for idleness; None: [scheduling]'s.
    keep_alive_s: float | None = None
    # Nodes the model may be loaded on at once (cortex_gateway.replicas): more are added under a deep queue,
    # up to max_replicas; min_replicas are kept loaded (pre-warmed). 1 and 0: one node, loaded on demand.
    max_replicas: int = 1
    min_replicas: int = 0

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
        if self.speculative:
            spec["speculative"] = self.speculative
        return spec


@dataclass
class Scheduling:
    """`[scheduling]`: what the gateway does with models over time, beyond placing each request."""

    keep_alive_s: float = 0.0  # a model idle this long is unloaded (cortex_gateway.keep_alive); 0: never
    prefix_map_entries: int = 100_000  # prefixes and session hints remembered (cortex_gateway.prefix_map); 0: off
    affinity_margin: int = 4  # requests busier than the least busy node a prefix's node may be (affinity)
    scale_out_queue: int = 4  # requests waiting per replica, beyond its slots, that add a replica (replicas)
    replica_idle_s: float = 300.0  # an extra replica idle this long is unloaded (cortex_gateway.replicas)
    # A cold load whose room is held by busy models waits this long for one to idle, then is a 503 (lifecycle).
    max_wait_s: float = 120.0
    # A model loaded for requests that had to wait is not evicted for this long after its load, so a swap
    # serves a turn's worth of its demand before the next one (cortex_gateway.swaps); 0: off.
    min_residency_s: float = 30.0


# 0 means "off" (never unloaded for idleness; no prefix map) or "never busier" (the margin), not "at once":
# >= 0, as a count where 0 means none.
SCHEDULING_LIMITS = {"keep_alive_s": NON_NEGATIVE, "prefix_map_entries": NON_NEGATIVE,
                     "affinity_margin": NON_NEGATIVE, "scale_out_queue": AT_LEAST_ONE, "replica_idle_s": POSITIVE,
                     "max_wait_s": POSITIVE, "min_residency_s": NON_NEGATIVE}
REPLICA_LIMITS = {"max_replicas": {"minimum": 1, "maximum": 1024}, "min_replicas": {"minimum": 0, "maximum": 1024}}


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
    node_streams: bool = True  # follow each neuron's health stream (cortex_gateway.node_watch); polls are the fallback
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
    shutdown_grace_s: float = 30.0  # after SIGTERM, how long in-flight requests may take to finish
    responses_store_max: int = 1000  # stored Responses (previous_response_id, GET); 0 keeps none
    responses_store_ttl_s: float = 3600.0  # a stored response is forgotten this long after it was made
    responses_store_max_mb: float = 256.0  # all stored Responses, in JSON bytes; the least recently used go first
    responses_store_max_response_mb: float = 16.0  # one stored response (its whole conversation), in JSON bytes
    hosted_tools: str = "drop"  # Responses hosted tools (web_search...): "drop" (not offered, said so) or "refuse"
    # Images in chat (cortex_gateway.chat_images): one image's bounds, and whether http(s) image URLs are fetched.
    image_max_mb: float = 20.0
    image_max_megapixels: float = 50.0
    image_fetch: bool = False  # off: such URLs are a 400 (send data URLs); on: fetched from public addresses only
    image_fetch_max_mb: float = 20.0
    image_fetch_timeout_s: float = 10.0
    auth: AuthSettings = field(default_factory=AuthSettings)
    config_path: Path | None = None
    models_path: Path | None = None
    keys_path: Path | None = None
    local_neuron: bool = False  # the embedded default: run the one neuron as a child (cortex_gateway.embedded)
    # What the gateway learns and keeps across restarts (a model's measured memory, ...): one directory.
    state_dir: Path = field(default_factory=default_state_dir)
    # [state] url: the database of keys, usage and budgets (cortex_gateway.state_db); None: SQLite in state_dir.
    state_url: str | None = None
    scheduling: Scheduling = field(default_factory=Scheduling)
    max_key_labels: int = 100  # [metrics]: keys with their own label in the per-key series; the rest share one

    def resolve_alias(self, model: str) -> str:
        return self.aliases.get(model, model)


# [gateway]'s numbers beyond those both servers have; see neuron.shared.config_fields for the rules.
GATEWAY_LIMITS = {
    **SERVER_LIMITS, "poll_interval_s": POSITIVE, "poll_timeout_s": POSITIVE, "load_timeout_s": POSITIVE,
    "progress_interval_s": POSITIVE, "upstream_read_timeout_s": POSITIVE, "down_after": AT_LEAST_ONE,
    "responses_store_max": NON_NEGATIVE, "responses_store_ttl_s": POSITIVE, "responses_store_max_mb": POSITIVE,
    "responses_store_max_response_mb": POSITIVE, "image_max_mb": POSITIVE, "image_max_megapixels": POSITIVE,
    "image_fetch_max_mb": POSITIVE, "image_fetch_timeout_s": POSITIVE,
}
AUTH_LIMITS = {"requests_per_minute": NON_NEGATIVE, "max_concurrent": NON_NEGATIVE}  # 0: no limit


def locate_config(given: Path | None) -> Path | None:
    """--config, else $CORTEX_CONFIG, else ~/.cortex/cortex.toml if it exists; None: the embedded default."""
    if given is not None:
        return given
    if env := os.environ.get("CORTEX_CONFIG"):
        return Path(env)
    default = DEFAULT_CONFIG.expanduser()
    return default if default.exists() else None


def gateway_config_from_flags(config_path: Path | None = None, *, listen: str | None = None,
                              metrics_listen: str | None = None) -> GatewayConfig:
    """`cortex serve`'s flags over the config it finds (`locate_config`), or over the embedded default."""
    path = locate_config(config_path)
    config = load_config(path) if path else embedded_default()
    if listen:
        config.host, config.port = parse_listen(listen, "--listen")
    if metrics_listen:
        config.metrics_host, config.metrics_port = parse_listen(metrics_listen, "--metrics-listen")
    return config


def embedded_default() -> GatewayConfig:
    """No config file: loopback, over a local neuron of our own on a free port (cortex_gateway.embedded)."""
    local = NeuronSpec("local", f"http://127.0.0.1:{free_port()}")
    return GatewayConfig(neurons=[local], poll_interval_s=1.0, local_neuron=True)


def load_config(path: Path) -> GatewayConfig:
    """Read and validate `cortex.toml` (and its models file)."""
    top = Section(read_toml(path), path)
    gw = top.table("gateway")
    cfg = GatewayConfig(config_path=path)
    if (listen := gw.opt_str("listen", expected="HOST:PORT")) is not None:
        cfg.host, cfg.port = parse_listen(listen, gw.at("listen"))
    if (listen := gw.opt_str("metrics_listen", expected="HOST:PORT")) is not None:
        cfg.metrics_host, cfg.metrics_port = parse_listen(listen, gw.at("metrics_listen"))
    cfg = replace(cfg, **gw.numbers(GATEWAY_LIMITS, cfg))
    cfg.max_connections_per_node = _node_connections(gw)
    _check_store_bytes(cfg, gw)
    cfg.state_dir = gw.opt_path("state_dir", cfg.state_dir)
    cfg.state_url = read_state_url(top.table("state"))
    cfg.node_streams = gw.opt_bool("node_streams", cfg.node_streams)
    cfg.image_fetch = gw.opt_bool("image_fetch", cfg.image_fetch)
    cfg.hosted_tools = gw.opt_choice("hosted_tools", ("drop", "refuse"), cfg.hosted_tools)
    cfg.neurons = _neurons(top.tables("neurons"), gw.opt_str("neuron_token", expected="a token for every neuron"))
    cfg.strategy = top.table("eviction").opt_choice("strategy", STRATEGIES, cfg.strategy)
    cfg.scheduling = Scheduling(**top.table("scheduling").numbers(SCHEDULING_LIMITS, cfg.scheduling))
    cfg.max_key_labels = top.table("metrics").opt_int("max_key_labels", cfg.max_key_labels, minimum=0)
    auth = top.table("auth")
    cfg.auth, cfg.keys_path = _auth(auth), auth.opt_path("keys_file")
    if (models_path := top.opt_path("models_config")) is not None:
        cfg.models_path = models_path
        cfg.models, cfg.aliases = load_models_file(models_path)
    return cfg


def _node_connections(gw: Section) -> int:
    """The bound on connections to one neuron: at least 1, and below the neuron's own per-client cap."""
    most = NeuronConfig.max_connections_per_client - CONTROL_CONNECTIONS_PER_NODE
    return gw.opt_int("max_connections_per_node", GatewayConfig.max_connections_per_node, minimum=1, maximum=most,
                      hint=f": a neuron closes connections past its max_connections_per_client "
                           f"({NeuronConfig.max_connections_per_client} by default) from one address, and the "
                           f"gateway keeps {CONTROL_CONNECTIONS_PER_NODE} more per node for polls and loads")


def _check_store_bytes(cfg: GatewayConfig, gw: Section) -> None:
    """One stored response no larger than the whole store."""
    if cfg.responses_store_max_response_mb > cfg.responses_store_max_mb:
        raise ConfigError(f"{gw.at('responses_store_max_response_mb')}: "
                          f"{cfg.responses_store_max_response_mb:g} is more than the whole store "
                          f"(responses_store_max_mb = {cfg.responses_store_max_mb:g}); lower it or raise that")


def _auth(auth: Section) -> AuthSettings:
    lists = {}
    for key in ("keys", "admin_keys"):
        values = auth.opt_list(key, "a list of keys")
        if not all(len(k) >= 8 for k in values):
            raise ConfigError(f"{auth.at(key)}: expected strings of at least 8 characters")
        lists[key] = values
    names: dict[str, str] = {}
    if (keys_file := auth.opt_path("keys_file")) is not None:
        names = key_names(keys_file, auth.path)
        lists["keys"] += list(names)
    limits = auth.numbers(AUTH_LIMITS, AuthSettings())
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


def _neurons(items: list[Section], default_token: str | None = None) -> list[NeuronSpec]:
    out, seen = [], set()
    for item in items:
        name = item.opt_str("name", expected="a node name")
        endpoint = item.opt_str("endpoint", expected="an http(s) URL")
        if not name or not _NAME.match(name):
            raise ConfigError(f"{item.at('name')}: expected a name of letters, digits, -, _ or .")
        if not endpoint or not _URL.match(endpoint):
            raise item.fail("endpoint", "an http(s) URL such as http://10.0.0.5:13131", endpoint)
        if name in seen:
            raise ConfigError(f"{item.at('name')}: {name!r} is used by another neuron")
        seen.add(name)
        token = item.opt_str("token", expected="the neuron's token") or default_token
        out.append(NeuronSpec(name, endpoint.rstrip("/"), token))
    return out


def load_models_file(path: Path) -> tuple[dict[str, ModelProfile], dict[str, str]]:
    top = Section(read_toml(path), path)
    models: dict[str, ModelProfile] = {}
    for item in top.tables("models"):
        profile = _profile(item)
        if profile.id in models:
            raise ConfigError(f"{item.at('id')}: {profile.id!r} is defined twice")
        models[profile.id] = profile
    aliases = top.table("aliases")
    for alias in aliases.values:
        aliases.opt_str(alias, expected="a model id")
    return models, dict(aliases.values)


def _profile(item: Section) -> ModelProfile:
    model_id = item.opt_str("id", expected="a model id")
    if not model_id:
        raise ConfigError(f"{item.at('id')}: required")
    backend = item.opt_choice("backend", BACKENDS, "auto")
    engine_args = item.opt_list("engine_args")
    if engine_args and backend not in EXTERNAL_ENGINES:
        raise ConfigError(f"{item.at('engine_args')}: a list of strings, for a backend of "
                          f"{', '.join(EXTERNAL_ENGINES)}")
    if engine_args and (problem := refusal(backend, engine_args)) is not None:  # the neuron would refuse the load
        raise ConfigError(f"{item.at('engine_args')}{problem}")
    return ModelProfile(
        id=model_id, path=item.opt_str("path", expected="a path"),
        source=item.opt_str("source", expected="a hub id such as org/name"), backend=backend,
        pinned_on=item.opt_list("pinned_on", "a list of node names"), priority=item.opt_int("priority", 100),
        devices=item.opt_list("devices", "a list of device indices", item=(int, str)),
        context_size=item.opt_int("context_size", **CONTEXT_SIZE), engine_args=engine_args,
        speculative=_speculative(item, backend),
        keep_alive_s=item.opt_float("keep_alive_s", **SCHEDULING_LIMITS["keep_alive_s"]), **_replicas(item),
    )


def _speculative(item: Section, backend: str) -> dict | None:
    """`speculative = {method = "ngram", ...}`, checked as the neuron will check the load."""
    value = item.values.get("speculative")
    if value is not None and backend not in ("auto", *SPECULATIVE_BACKENDS):
        raise ConfigError(f"{item.at('speculative')}: drafts are verified on the {' and '.join(SPECULATIVE_BACKENDS)} "
                          f"backends, not {backend}; leave speculative out or load a GGUF")
    try:
        spec = SpecConfig.from_dict(value if not isinstance(value, dict) else dict(value))
    except ApiError as err:
        raise ConfigError(item.at("speculative") + err.message.removeprefix("speculative")) from None
    if spec is not None and spec.method == "draft" and backend not in ("auto", *DRAFT_MODEL_BACKENDS):
        raise ConfigError(f"{item.at('speculative')}: a draft model runs beside the target on "
                          f"{', '.join(DRAFT_MODEL_BACKENDS)}, not {backend}; use method \"ngram\" or load a GGUF")
    return spec.to_dict() if spec is not None else None


def _replicas(item: Section) -> dict[str, int]:
    """`max_replicas` and `min_replicas`, the floor no higher than the ceiling."""
    counts = item.numbers(REPLICA_LIMITS, ModelProfile(""))
    if counts["min_replicas"] > counts["max_replicas"]:
        raise ConfigError(f"{item.at('min_replicas')}: {counts['min_replicas']} is more than max_replicas "
                          f"({counts['max_replicas']}); lower it or raise max_replicas")
    return counts


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
    write_atomic(models_path, tomlkit.dumps(doc))
