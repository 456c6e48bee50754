"""cortex neuron: the per-node inference daemon.

The top level is light on purpose: the gateway and the CLI import its shared
modules (`protocol`, `client`, `errors`, `sse`, `auth`, `http`, `fields`, `connections`,
`config`, `metrics`) and must not pull in torch or llama_cpp by doing so. The
engine that runs models lives in `neuron.engine`; the tiny-model writer in
`neuron.tiny`. tests/test_boundary.py keeps it that way.
"""
