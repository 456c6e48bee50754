"""The field policy of OpenAI-dialect embedding requests: what each field does here.

Apart from the schema (`neuron.server.embedding_schema`) so that the gateway's field tables
(`cortex_gateway.field_tables`) and docs/api.md read it without importing the neuron's server.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored

POLICIES = [FieldPolicy("OpenAI embeddings", {
    "model": honoured(),
    "input": honoured("a string, a list of strings, a list of token ids or a list of lists of token ids; "
                      "token ids are the served model's own vocabulary (not tiktoken's)"),
    "encoding_format": honoured('"float" or "base64" (little-endian float32, as OpenAI sends it)'),
    "dimensions": honoured("the model's own dimension always; fewer only for Matryoshka models "
                           "(config.json `matryoshka_dimensions` or `is_matryoshka`), cut and re-normalised"),
    "user": ignored("an end-user id for OpenAI's abuse monitoring; nothing here monitors users"),
})]
POLICY = POLICIES[0]
