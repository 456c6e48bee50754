"""The OpenAI Responses API (`/v1/responses`), served by translation to the neurons' chat completions."""
