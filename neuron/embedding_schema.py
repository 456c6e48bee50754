"""Validation of OpenAI-dialect embedding requests into typed objects."""

from __future__ import annotations

from typing import Any

from neuron.errors import bad_request
from neuron.fields import req_str, require_object


def parse_embedding_input(body: Any) -> tuple[str, list[str]]:
    data = require_object(body)
    model = req_str(data, "model")
    value = data.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise bad_request("input: expected a string or a non-empty list of strings", param="input")
    if len(value) > 2048:
        raise bad_request("input: at most 2048 strings per request", param="input")
    return model, value
