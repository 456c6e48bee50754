"""The keys under which `cortex_gateway.app.create_app` keeps the gateway's parts, for its handlers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from cortex_gateway.fleet import Fleet
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.responses.store import ResponseStore
from cortex_gateway.state_db import ApiKey, StateDB

FLEET = web.AppKey("fleet", Fleet)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", GatewayMetrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
KEEPALIVE_S = web.AppKey("keepalive_s", float)
RESPONSE_STORE = web.AppKey("response_store", ResponseStore)  # stored responses, for previous_response_id
PRIORITY = web.RequestKey("priority", str)  # the key's "high" | "normal" | "low", sent on to the neuron; absent: normal
STATE_DB = web.AppKey("state_db", StateDB)  # keys, usage, budget reservations (cortex_gateway.state_db)
# The key a request came with, as resolved by cortex_gateway.auth (a config-file key as an ApiKey with the [auth]
# limits): what the allow-list, budget, TPM and priority layers read. Absent: a gateway without keys.
TENANT = web.RequestKey("tenant", ApiKey)
