"""Every dialect's field table in one place: rendered into docs/api.md, walked by the SDK field test.

`python -m cortex_gateway.field_tables` prints the tables as markdown.
"""

from __future__ import annotations

from cortex_gateway.anthropic import fields as anthropic_fields
from cortex_gateway.responses import fields as responses_fields
from neuron.shared import embedding_fields, image_fields, openai_fields, rerank_fields, transcription_fields
from neuron.shared.field_policy import FieldPolicy

MODULES = (openai_fields, embedding_fields, rerank_fields, image_fields, transcription_fields, anthropic_fields,
           responses_fields)


def all_policies() -> list[FieldPolicy]:
    return [policy for module in MODULES for policy in module.POLICIES]


def markdown() -> str:
    return "\n".join(p.markdown() for p in all_policies())


if __name__ == "__main__":
    print(markdown())
