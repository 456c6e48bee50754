"""cortex neuron: the per-node inference daemon.

Kept import-light on purpose: the gateway and the CLI import `neuron.api` and
`neuron.client`, and must not pull in torch or llama_cpp by doing so.
"""
