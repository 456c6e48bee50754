"""The keys under which `neuron.server.app.create_app` keeps one node's parts, for its route handlers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from neuron.engine.faults import FaultInjector
from neuron.engine.inference import InferenceEngine
from neuron.engine.registry import Registry
from neuron.pulls.puller import Puller
from neuron.server.metrics import NeuronMetrics

ENGINE = web.AppKey("engine", InferenceEngine)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", NeuronMetrics)
FAULTS = web.AppKey("faults", FaultInjector)
KEEPALIVE_S = web.AppKey("keepalive_s", float)
NODE_NAME = web.AppKey("node_name", str)
STARTED_AT = web.AppKey("started_at", float)
PULLER = web.AppKey("puller", Puller)
ENGINE_SESSION = web.AppKey("engine_session", aiohttp.ClientSession)  # relays to external engines
ACCESS = web.RequestKey("access", dict)  # the access log's fields
