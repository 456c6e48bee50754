"""The gateway's Prometheus metrics, on a registry of its own, served on the metrics port."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from cortex_gateway.recent import RecentStats
from neuron.shared.metric_buckets import LATENCY_BUCKETS, LOAD_BUCKETS, MIB, TTFT_BUCKETS
from neuron.shared.request_context import CLIENT_CLOSED

TPS_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)


# The key label shared by keys beyond [metrics] max_key_labels; no key can be named so (a name starts with a
# letter or digit), so it never adds to a real key's series.
OTHER_KEYS = "_other"
UNKNOWN = "unknown"  # one label value for every model name the catalog does not know: no unbounded series
# Set on a request whose outcome dispatch recorded (aiohttp's typed request key where it has one).
OBSERVED = web.RequestKey("observed", bool)
RECORD = web.RequestKey("record", object)  # for the access log
# Inference routes, by the endpoint label their requests get.
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
             "/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens", "/v1/responses": "responses",
             "/v1/rerank": "rerank", "/rerank": "rerank", "/v2/rerank": "rerank", "/v1/images/generations": "images",
             "/v1/audio/transcriptions": "transcriptions"}
# Endpoints whose answers have no time to first token: they generate nothing (Anthropic's token count), or come
# whole at the end of one job (images: a "first token" would be the whole job, and skew the TTFT series).
NO_OUTPUT = frozenset({"count_tokens", "images"})
# Why the gateway unloads a model other than to make room: idle past its keep-alive (cortex_gateway.keep_alive).
UNLOAD_REASONS = ("keep_alive",)
# Replicas the gateway adds or removes (cortex_gateway.scaler), as (direction, reason): a deep queue, a floor
# restored, an extra replica idle.
SCALE_EVENTS = (("out", "queue"), ("out", "min_replicas"), ("in", "idle"))
_REFUSAL_TYPES = {401: "authentication_error", 403: "permission_error", 408: "request_timeout",
                  413: "request_too_large", 429: "rate_limit_error"}


@dataclass
class RequestRecord:
    """What one inference request did, filled in as it goes and observed once when it ends."""

    model: str
    endpoint: str
    started: float
    node: str = ""
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    error_type: str | None = None
    label: str = UNKNOWN  # the model as a metric label: the model when the catalog knows it, else UNKNOWN
    sent_outputs: int = 0  # output events relayed to the client (proxy.outputs): a token or more each
    images: int = 0  # images generated, and the neuron's seconds drawing them (its usage's `images`, `seconds`)
    image_seconds: float = 0.0
    audio_seconds: float = 0.0  # audio transcribed (a transcription's usage: `type` duration, `seconds`)

    # The record is written only through these methods, one per thing that happens to the request, so what
    # each step of the exchange records is read here, not in the five modules that take those steps.
    def placed(self, node: str) -> None:
        """On a node: its model is then known to the catalog, and is its label."""
        self.node, self.label = node, self.model

    def settle_label(self, known: Callable[[str], bool]) -> None:
        """At the end: a request that never reached a node is labelled by its model only if the catalog knows
        the name (any other name would be a new series)."""
        if not self.node and known(self.model):
            self.label = self.model

    def answered(self, status: int, usage: dict | None = None, error_type: str | None = None) -> None:
        """A whole (non-streaming) answer came back: its first output and its end are one moment. A call
        that generates nothing (a token count) has no first output to time."""
        self.finished_at = time.perf_counter()
        if self.endpoint not in NO_OUTPUT:
            self.first_token_at = self.finished_at
        self.status, self.error_type = status, error_type
        self.take_usage(usage)

    def streaming(self, prompt_tokens: str) -> None:
        """The neuron's stream opened; its headers carry the prompt's size (digits), before any usage."""
        if prompt_tokens.isdigit():
            self.prompt_tokens = int(prompt_tokens)

    def first_output(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def sent(self, outputs: int) -> None:
        """Output events the client was given: what a stream cut short is counted by."""
        self.sent_outputs += outputs

    def finished(self, usage: dict | None) -> None:
        """A stream ended whole, with the usage its end carried (None when it carried none)."""
        self.finished_at = time.perf_counter()
        self.take_usage(usage)

    def take_usage(self, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.images, self.image_seconds = int(usage.get("images") or 0), float(usage.get("seconds") or 0.0)
            if usage.get("type") == "duration":
                self.audio_seconds = float(usage.get("seconds") or 0.0)

    def failed(self, status: int, error_type: str) -> None:
        """The request ended in an error. A stream cut short (its client left, its node failed) has no usage
        at its end: what it was sent counts as its completion tokens, as a lower bound."""
        self.status, self.error_type = status, error_type
        self.completion_tokens = max(self.completion_tokens, self.sent_outputs)

    def client_left(self) -> None:
        self.failed(CLIENT_CLOSED, "client_closed")


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        labels = ["model", "node"]
        self.requests = Counter("cortex_requests", "Requests served", [*labels, "endpoint", "status"], registry=r)
        self.errors = Counter("cortex_errors", "Failed requests by error type", [*labels, "type"], registry=r)
        self.tokens = Counter("cortex_tokens", "Tokens", [*labels, "kind"], registry=r)
        self.ttft = Histogram("cortex_time_to_first_token_seconds", "Time to first token", labels,
                              buckets=TTFT_BUCKETS, registry=r)
        self.tps = Histogram("cortex_tokens_per_second", "Completion tokens per second of decode", labels,
                             buckets=TPS_BUCKETS, registry=r)
        self.latency = Histogram("cortex_request_duration_seconds", "Total request latency", labels,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.cold_starts = Counter("cortex_cold_starts", "Models loaded on demand", labels, registry=r)
        self.cold_start_seconds = Histogram("cortex_cold_start_seconds", "Load time of cold starts", labels,
                                            buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("cortex_evictions", "Models evicted to make room", [*labels, "strategy"],
                                 registry=r)
        # Unloads the gateway decides for a reason other than room (evictions count those): UNLOAD_REASONS.
        self.unloads = Counter("cortex_unloads", "Models unloaded by the gateway, not to make room",
                               [*labels, "reason"], registry=r)
        self.scale_events = Counter("cortex_scale_events", "Replicas added or removed by the gateway",
                                    ["model", "direction", "reason"], registry=r)
        self.queue_wait = Histogram("cortex_queue_wait_seconds", "Time a request waited for its model",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        # A cold load's wait for room (0 for one that planned at once), and the loads that had to wait (swaps).
        self.cold_load_wait_seconds = Histogram("cortex_cold_load_wait_seconds",
                                                "Time a cold load waited for room on a node", ["model"],
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.cold_load_waits = Counter("cortex_cold_load_waits", "Cold loads that had to wait for room", ["model"],
                                       registry=r)
        self.retries = Counter("cortex_retries", "Requests retried on another node", ["model"], registry=r)
        self.images = Counter("cortex_images_generated", "Images generated", labels, registry=r)
        self.image_seconds = Histogram("cortex_image_seconds", "Seconds of generation per image, on the node",
                                       labels, buckets=LATENCY_BUCKETS, registry=r)
        self.audio_seconds = Counter("cortex_audio_seconds", "Seconds of audio transcribed", labels, registry=r)
        # Per key name (cortex_gateway.metering), bounded: keys beyond [metrics] max_key_labels share "_other".
        self.key_labels = KeyLabels()
        self.key_tokens = Counter("cortex_key_tokens", "Tokens billed to a key", ["key", "kind"], registry=r)
        self.key_requests = Counter("cortex_key_requests", "Requests billed to a key", ["key"], registry=r)
        self.key_refusals = Counter("cortex_key_refusals", "Requests refused for a key's budget or tokens per "
                                    "minute", ["key", "reason"], registry=r)

        self.recent = RecentStats()
        self._catalog: Callable[[], list[dict]] = list  # set by watch_fleet
        self._strategy = "lru"
        self._replicated: frozenset[str] = frozenset()  # models whose replicas the gateway manages
        self._children: dict[tuple, object] = {}
        self._series: dict[tuple[str, str], _Series] = {}

    # prometheus_client's labels() takes a lock and builds a key on every call; per request
    # that is measurable at gateway rates, so children are looked up once and kept.
    def child(self, metric, *labels: str):
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def series(self, model: str, node: str) -> _Series:
        found = self._series.get((model, node))
        if found is None:
            found = self._series[(model, node)] = _Series(self, model, node)
        return found

    def observe_wait(self, model: str, seconds: float) -> None:
        self.child(self.queue_wait, model).observe(seconds)

    def observe(self, rec: RequestRecord) -> None:
        node, model = rec.node or "none", rec.label
        self.child(self.requests, model, node, rec.endpoint, str(rec.status)).inc()
        if rec.error_type:
            self.child(self.errors, model, node, rec.error_type).inc()
            self.recent.record(model, None, None, ok=False)
            if rec.prompt_tokens or rec.completion_tokens:  # a stream cut short: the work it was sent
                self._count_tokens(self.series(model, node), rec)
            return
        series = self.series(model, node)
        series.latency.observe(time.perf_counter() - rec.started)
        if rec.images:
            self.child(self.images, model, node).inc(rec.images)
            self.child(self.image_seconds, model, node).observe(rec.image_seconds / rec.images)
        if rec.audio_seconds:
            self.child(self.audio_seconds, model, node).inc(rec.audio_seconds)
        self._count_tokens(series, rec)
        ttft = tps = None
        if rec.first_token_at is not None and rec.endpoint != "embeddings":
            ttft = rec.first_token_at - rec.started
            series.ttft.observe(ttft)
            if rec.finished_at and rec.completion_tokens > 1 and rec.finished_at > rec.first_token_at:
                tps = (rec.completion_tokens - 1) / (rec.finished_at - rec.first_token_at)
                series.tps.observe(tps)
        self.recent.record(model, ttft, tps, ok=True)

    @staticmethod
    def _count_tokens(series: _Series, rec: RequestRecord) -> None:
        series.prompt_tokens.inc(rec.prompt_tokens)
        series.completion_tokens.inc(rec.completion_tokens)

    def observe_key_tokens(self, key: str, prompt: int, completion: int) -> None:
        label = self.key_labels(key)
        self.child(self.key_requests, label).inc()
        self.child(self.key_tokens, label, "prompt").inc(prompt)
        self.child(self.key_tokens, label, "completion").inc(completion)

    def observe_key_refusal(self, key: str, reason: str) -> None:
        """`reason`: "budget" (the window's budget is spent) or "tpm" (tokens per minute)."""
        self.child(self.key_refusals, self.key_labels(key), reason).inc()

    def observe_refusal(self, endpoint: str, status: int) -> None:
        """A request refused before it reached the dispatcher (bad JSON, a bad field, a key, a limit)."""
        self.child(self.requests, UNKNOWN, "none", endpoint, str(status)).inc()
        self.child(self.errors, UNKNOWN, "none", _REFUSAL_TYPES.get(status, "invalid_request_error")).inc()

    def watch_fleet(self, fleet, catalog: Callable[[], list[dict]] = list, strategy: str = "lru",
                    replicated: frozenset[str] = frozenset()) -> None:
        """Gauges of the fleet read at scrape time. `catalog` lists the models the gateway offers
        (`cortex_gateway.catalog_routes.catalog`), for the healthy nodes each has and the zero series below;
        `replicated`, the models with replicas to manage (`max_replicas` > 1 or a `min_replicas`)."""
        self.registry.register(_FleetCollector(fleet, catalog))
        self._catalog, self._strategy, self._replicated = catalog, strategy, replicated

    def render(self) -> bytes:
        self._zero_rare_events()
        return generate_latest(self.registry)

    def _zero_rare_events(self) -> None:
        """A zero series for every cold start, eviction, unload and retry the catalog allows, before the first
        one: increase() cannot see the event that creates a series (it is born at 1), and these are rare enough
        that the first one matters. Bounded by the catalog: models times the nodes that have them."""
        for entry in self._catalog():
            if "alias_of" in entry:
                continue
            model = entry["id"]
            self.child(self.retries, model)
            for node in entry["loadable_on"]:
                self.child(self.cold_starts, model, node)
            for node in entry["loaded_on"]:
                self.child(self.evictions, model, node, self._strategy)
                for reason in UNLOAD_REASONS:
                    self.child(self.unloads, model, node, reason)
        for model in self._replicated:
            for direction, reason in SCALE_EVENTS:
                self.child(self.scale_events, model, direction, reason)


class KeyLabels:
    """A key's name as a label: the first `limit` names seen keep their own, later ones share OTHER_KEYS, so
    keys made at run time cannot grow the series without bound."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self.named: set[str] = set()

    def __call__(self, key: str) -> str:
        if key in self.named:
            return key
        if len(self.named) < self.limit:
            self.named.add(key)
            return key
        return OTHER_KEYS


class _Series:
    """The per-(model, node) children a finished request updates."""

    def __init__(self, m: GatewayMetrics, model: str, node: str):
        self.latency = m.latency.labels(model, node)
        self.ttft = m.ttft.labels(model, node)
        self.tps = m.tps.labels(model, node)
        self.prompt_tokens = m.tokens.labels(model, node, "prompt")
        self.completion_tokens = m.tokens.labels(model, node, "completion")


class _FleetCollector:
    """Per node, device and catalog model gauges, read from the fleet at scrape time."""

    def __init__(self, fleet, catalog: Callable[[], list[dict]]):
        self.fleet = fleet
        self.catalog = catalog

    def collect(self):
        up = GaugeMetricFamily("cortex_node_up", "1 when the node answers its polls", labels=["node"])
        draining = GaugeMetricFamily("cortex_node_draining", "1 while the node is drained (cortex drain): it "
                                     "takes no new requests", labels=["node"])
        loaded = GaugeMetricFamily("cortex_node_models_loaded", "Models loaded", labels=["node"])
        in_flight = GaugeMetricFamily("cortex_node_in_flight", "Requests in flight through the gateway",
                                      labels=["node"])
        # Base units, as Prometheus names them: bytes (the fleet's figures are MiB).
        used = GaugeMetricFamily("cortex_device_memory_used_bytes", "Device memory used", labels=["node", "device"])
        free = GaugeMetricFamily("cortex_device_memory_free_bytes", "Device memory free", labels=["node", "device"])
        total = GaugeMetricFamily("cortex_device_memory_total_bytes", "Device memory in all",
                                  labels=["node", "device"])
        for node in self.fleet.nodes.values():
            up.add_metric([node.name], 1.0 if node.healthy else 0.0)
            draining.add_metric([node.name], 1.0 if node.draining else 0.0)
            loaded.add_metric([node.name], sum(1 for m in node.models if node.has_loaded(m)))
            in_flight.add_metric([node.name], self.fleet.in_flight_on(node.name))
            for dev in node.health.devices:
                used.add_metric([node.name, dev.id], dev.used_mb * MIB)
                free.add_metric([node.name, dev.id], dev.free_mb * MIB)
                total.add_metric([node.name, dev.id], dev.total_mb * MIB)
        yield from (up, draining, loaded, in_flight, used, free, total, self._healthy_nodes(), self._replicas())

    def _replicas(self) -> GaugeMetricFamily:
        """Per catalog model (aliases left out), the nodes taking requests that have it loaded: its replicas."""
        gauge = GaugeMetricFamily("cortex_replicas", "Nodes taking requests (healthy, not draining) with the model "
                                  "loaded", labels=["model"])
        for entry in self.catalog():
            if "alias_of" not in entry:
                gauge.add_metric([entry["id"]], sum(1 for n in entry["loaded_on"] if self.fleet.nodes[n].accepting))
        return gauge

    def _healthy_nodes(self) -> GaugeMetricFamily:
        """Per catalog model (aliases left out: they name another's nodes), the nodes taking requests (healthy,
        not draining) that have it loaded or can load it; 0 means requests for it fail. Labels stay within the
        catalog."""
        gauge = GaugeMetricFamily("cortex_model_healthy_nodes", "Nodes taking requests (healthy, not draining) "
                                  "that have the model loaded or can load it", labels=["model"])
        for entry in self.catalog():
            if "alias_of" not in entry:
                nodes = set(entry["loaded_on"]) | set(entry["loadable_on"])
                gauge.add_metric([entry["id"]], sum(1 for n in nodes if self.fleet.nodes[n].accepting))
        return gauge


def count_refusals(metrics: GatewayMetrics):
    """Count inference requests that failed before the dispatcher recorded them, so none go uncounted."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        response = await handler(request)
        endpoint = ENDPOINTS.get(request.path)
        if endpoint is not None and response.status >= 400 and not request.get(OBSERVED):
            metrics.observe_refusal(endpoint, response.status)
        return response

    return middleware
