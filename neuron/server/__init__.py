"""The neuron's own HTTP server: the app factory, its routes, request schemas, answers, demo model,
metrics and the model catalog on disk. Only the neuron runs this; the gateway and the CLI never
import it (they talk to it over HTTP through `neuron.shared.client`).
"""
