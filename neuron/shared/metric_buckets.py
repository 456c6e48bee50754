"""Histogram buckets and units both servers' metrics use, so a dashboard reads the gateway and the
neuron on one scale."""

# Buckets wide enough for a 0.5B model on a GPU (milliseconds) and a 70B one on a CPU (minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


MIB = 2**20  # the fleet's figures are MiB; Prometheus wants bytes (both servers convert with it)
