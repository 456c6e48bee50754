"""Prometheus metrics of one neuron, on a registry of its own (tests never share globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from neuron.shared.metric_buckets import LATENCY_BUCKETS, LOAD_BUCKETS, MIB, TTFT_BUCKETS


class NeuronMetrics:
    def __init__(self, registry_view):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cortex_neuron_requests", "Inference requests", ["model", "endpoint", "status"],
                                registry=r)
        self.tokens = Counter("cortex_neuron_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.ttft = Histogram("cortex_neuron_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.latency = Histogram("cortex_neuron_request_duration_seconds", "Request latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.load_seconds = Histogram("cortex_neuron_model_load_seconds", "Model load time", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.uptime = Gauge("cortex_neuron_up", "1 while the neuron serves", registry=r)
        self.queue_wait = Histogram("cortex_neuron_queue_wait_seconds", "Time a request waited for a slot",
                                    ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.uptime.set(1)
        r.register(_LiveCollector(registry_view))

    def observe_generation(self, model: str, endpoint: str, prompt: int, completion: int,
                           ttft: float | None, seconds: float, cached: int = 0) -> None:
        self.requests.labels(model, endpoint, "ok").inc()
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "cached").inc(cached)  # prompt tokens reused, not prefilled
        self.tokens.labels(model, "completion").inc(completion)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        self.latency.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read from the registry and devices at scrape time, never stale."""

    def __init__(self, registry_view):
        self.view = registry_view

    def collect(self):
        reg = self.view
        in_flight = GaugeMetricFamily("cortex_neuron_in_flight", "Requests running", labels=["model"])
        queued = GaugeMetricFamily("cortex_neuron_queue_depth", "Requests waiting", labels=["model"])
        memory = GaugeMetricFamily("cortex_neuron_model_memory_bytes", "Measured model memory", labels=["model"])
        tps = GaugeMetricFamily("cortex_neuron_decode_tokens_per_second", "Recent decode rate", labels=["model"])
        running = GaugeMetricFamily("cortex_neuron_batch_running", "Sequences in the model's batch", labels=["model"])
        slots = GaugeMetricFamily("cortex_neuron_batch_slots", "Sequences the batch can hold", labels=["model"])
        steps = CounterMetricFamily("cortex_neuron_batch_steps", "Batched decode steps run", labels=["model"])
        drafts = CounterMetricFamily("cortex_neuron_draft_tokens", "Speculative decoding's draft tokens, verified "
                                     "(proposed) and kept (accepted)", labels=["model", "outcome"])
        for m in reg.models.values():
            adm = m.admission
            in_flight.add_metric([m.id], adm.in_flight if adm else 0)
            queued.add_metric([m.id], adm.queue_depth if adm else 0)
            memory.add_metric([m.id], m.memory_mb * MIB)
            tps.add_metric([m.id], m.decode_tps)
            if (batcher := getattr(m.backend, "batcher", None)) is not None:
                running.add_metric([m.id], batcher.running())
                slots.add_metric([m.id], len(batcher.slots))
                steps.add_metric([m.id], batcher.steps)
                drafts.add_metric([m.id, "proposed"], batcher.drafted)
                drafts.add_metric([m.id, "accepted"], batcher.draft_accepted)
        dev_free = GaugeMetricFamily("cortex_neuron_device_memory_free_bytes", "Free device memory",
                                     labels=["device"])
        dev_total = GaugeMetricFamily("cortex_neuron_device_memory_total_bytes", "Device memory", labels=["device"])
        for d in reg.devices.snapshot():
            dev_free.add_metric([d.id], d.free_mb * MIB)
            dev_total.add_metric([d.id], d.total_mb * MIB)
        yield from (in_flight, queued, memory, tps, running, slots, steps, drafts, dev_free, dev_total,
                    *_recoveries(reg))


def _recoveries(reg):
    """Device faults and poison recoveries, by model. A loaded model's series start at 0, so the first fault
    is an increase Prometheus sees (a series born at 1 hides it from increase())."""
    faults = CounterMetricFamily("cortex_neuron_device_faults", "Inferences that hit a device error",
                                 labels=["model"])
    recoveries = CounterMetricFamily("cortex_neuron_recoveries", "Reloads after a device error, by outcome "
                                     "(failed: the model was left unloaded)", labels=["model", "outcome"])
    models = set(reg.models) | set(reg.device_faults) | {m for m, _ in reg.recoveries}
    for model in sorted(models):
        faults.add_metric([model], reg.device_faults[model])
        for outcome in ("reloaded", "failed"):
            recoveries.add_metric([model, outcome], reg.recoveries[(model, outcome)])
    return faults, recoveries
