"""What the gateway and the CLI may import from the neuron: the node protocol and its client, errors
and their envelopes, the HTTP and SSE edge, auth, connection bounds, request ids and log lines, field
readers and policies, the neuron's light configuration, metric buckets.

Light on purpose: nothing here imports torch, llama_cpp, `neuron.server` or `neuron.engine`, so the
gateway stays light (tests/test_boundary.py checks it by prefix).
"""
