"""Every dialect's field table in one place: rendered into docs/api.md, walked by the SDK field test.

`python -m cortex_gateway.field_tables` prints the tables as markdown.
"""

from __future__ import annotations

import importlib

from neuron.field_policy import FieldPolicy

MODULES = ("neuron.openai_fields", "neuron.embedding_schema", "cortex_gateway.anthropic.fields",
           "cortex_gateway.responses.fields")


def all_policies() -> list[FieldPolicy]:
    out: list[FieldPolicy] = []
    for module in MODULES:
        try:
            out.extend(importlib.import_module(module).POLICIES)
        except ModuleNotFoundError:  # a dialect still being written
            continue
    return out


def markdown() -> str:
    return "\n".join(p.markdown() for p in all_policies())


if __name__ == "__main__":
    print(markdown())
