"""The Anthropic Messages dialect, served on every model by translation to and from OpenAI."""
