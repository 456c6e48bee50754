"""Models on this node's disk: pulled from the Hugging Face hub (sources, checks before a byte, resumable
verified downloads), and deleted."""
