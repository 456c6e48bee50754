"""External engines (llama-server, vLLM, SGLang) run by the neuron as child processes, one per model."""
