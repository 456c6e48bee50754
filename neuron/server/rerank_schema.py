"""Validation of rerank requests into typed objects; the field policy is `neuron.shared.rerank_fields`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_bool, opt_int, req_str, require_object
from neuron.shared.rerank_fields import POLICY

MAX_DOCUMENTS = 2048  # as embeddings' inputs per request: a retrieval's candidates fit many times over


@dataclass
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None  # None: every document
    return_documents: bool = True


def parse_rerank(body: Any) -> RerankRequest:
    data = require_object(body)
    POLICY.check(data)
    return RerankRequest(model=req_str(data, "model"), query=req_str(data, "query"),
                         documents=parse_documents(data.get("documents")),
                         top_n=opt_int(data, "top_n", minimum=1),
                         return_documents=opt_bool(data, "return_documents", default=True))


def parse_documents(value: Any) -> list[str]:
    """The documents' texts: strings, or objects with a string `text` (Jina's form). An empty string is
    scored like any other: a retrieval may well return one among its candidates."""
    if value is None:
        raise bad_request("documents: required, a list of strings to rank against the query", param="documents",
                          code="missing_field")
    if not isinstance(value, list):
        raise bad_request(f"documents: expected a list of strings, got {type(value).__name__}", param="documents")
    if not value:
        raise bad_request("documents: must not be empty; send at least one document to rank", param="documents")
    if len(value) > MAX_DOCUMENTS:
        raise bad_request(f"documents: at most {MAX_DOCUMENTS} per request, got {len(value)}; split the request",
                          param="documents")
    return [_text(item, i) for i, item in enumerate(value)]


def _text(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise bad_request(f"documents[{i}]: expected a string or an object with a string `text`, got "
                      f"{type(item).__name__}", param="documents")
