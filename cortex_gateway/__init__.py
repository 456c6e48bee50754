"""cortex serve: one OpenAI- and Anthropic-compatible API over a fleet of neurons."""
