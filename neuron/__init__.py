"""cortex neuron: the per-node inference daemon.

Three parts, and the path says who may import what:
- `neuron.shared`: what the gateway and the CLI import (protocol, client, errors, HTTP/SSE edge, ...);
  light, no torch or llama_cpp.
- `neuron.server`: the daemon's HTTP server (app factory, routes, schemas, answers).
- `neuron.engine`: what runs models (registry, admission, batching, backends, external engines);
  `neuron.pulls` fetches them from the hub, `neuron.tiny` writes tiny test models.
tests/test_boundary.py checks the rule by prefix.
"""
