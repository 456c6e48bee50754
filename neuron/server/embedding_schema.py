"""Validation of OpenAI-dialect embedding requests into typed objects.

`input` comes as OpenAI takes it: a string, a list of strings, a list of token ids or a list
of such lists. Token ids are the served model's own (its vocabulary, not tiktoken's); the
engine checks them against the vocabulary, since only the loaded model knows its size.

Its field policy is `neuron.shared.embedding_fields`, where the gateway's field tables read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron.shared.embedding_fields import POLICY
from neuron.shared.errors import bad_request
from neuron.shared.fields import req_str, require_object

MAX_INPUTS = 2048  # OpenAI's own limit per request
ENCODING_FORMATS = ("float", "base64")


EmbeddingInput = str | list[int]  # text, or the model's token ids


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[EmbeddingInput]
    names: list[str]  # how errors name each input: "input" for a lone one, else "input[i]"
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_embeddings(body: Any) -> EmbeddingRequest:
    data = require_object(body)
    POLICY.check(data)
    inputs, names = parse_input(data.get("input"))
    return EmbeddingRequest(model=req_str(data, "model"), inputs=inputs, names=names,
                            encoding_format=_encoding_format(data.get("encoding_format")),
                            dimensions=_dimensions(data.get("dimensions")))


def parse_input(value: Any) -> tuple[list[EmbeddingInput], list[str]]:
    """One entry per vector to make (a string, or a list of token ids), and each one's name."""
    expected = "expected a string, a list of strings, or token ids (a list of integers, or a list of such lists)"
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_token(t) for t in value)):
        return [_one_input(value, "input", expected)], ["input"]
    if not isinstance(value, list) or not value:
        raise bad_request(f"input: {expected}", param="input")
    if len(value) > MAX_INPUTS:
        raise bad_request(f"input: at most {MAX_INPUTS} inputs per request, got {len(value)}; split the request",
                          param="input")
    names = [f"input[{i}]" for i in range(len(value))]
    return [_one_input(item, name, expected) for item, name in zip(value, names, strict=True)], names


def _one_input(item: Any, where: str, expected: str) -> EmbeddingInput:
    if isinstance(item, str):
        if not item:
            raise bad_request(f"{where}: must not be an empty string", param="input")
        return item
    if not isinstance(item, list):
        raise bad_request(f"{where}: {expected}; got {type(item).__name__}", param="input")
    if not item:
        raise bad_request(f"{where}: must not be an empty list of token ids", param="input")
    for j, token in enumerate(item):
        if not _is_token(token):
            raise bad_request(f"{where}[{j}]: expected a token id (an integer), got {type(token).__name__}",
                              param="input")
    return item


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encoding_format(value: Any) -> str:
    if value is None:
        return "float"
    if value not in ENCODING_FORMATS:
        raise bad_request(f'encoding_format: expected "float" or "base64", got {value!r}', param="encoding_format")
    return value


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_token(value) or value < 1:
        raise bad_request(f"dimensions: expected a positive integer, got {value!r}", param="dimensions")
    return value


def check_dimensions(requested: int | None, native: int, matryoshka: tuple[int, ...] | None, model: str) -> int:
    """The vector length to answer with: the model's own unless it can be cut to `requested`."""
    if requested is None or requested == native:
        return native
    if requested > native:
        raise bad_request(f"dimensions: model {model!r} gives {native}-dimensional vectors; ask for at most "
                          f"{native}", param="dimensions", code="unsupported_dimensions")
    if matryoshka is None:
        raise bad_request(f"dimensions: model {model!r} gives {native}-dimensional vectors and was not trained "
                          f"to be cut shorter (no Matryoshka sizes in its config.json); omit dimensions or ask "
                          f"for {native}", param="dimensions", code="unsupported_dimensions")
    if matryoshka and requested not in matryoshka:
        sizes = ", ".join(map(str, (*matryoshka, native)))
        raise bad_request(f"dimensions: model {model!r} can give {sizes} dimensions, not {requested}",
                          param="dimensions", code="unsupported_dimensions")
    return requested
