"""The node's engine: which models are loaded (registry), who may run (admission), the device
threads (worker), prompts to tokens to text (inference, generation, chat_template, tool_calls),
fault injection, and the backends. Only the neuron's own server imports it."""
