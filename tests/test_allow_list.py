"""The allow-list decision (cortex_gateway.allow_list), table-tested: ids, aliases either side, fnmatch patterns."""

from __future__ import annotations

import pytest

from cortex_gateway.allow_list import allows, refusal, visible
from cortex_gateway.state_db import ApiKey, KeySettings

ALIASES = {"fast": "qwen-0.5b", "embed": "minilm-l6"}


def resolve(model: str) -> str:
    return ALIASES.get(model, model)


@pytest.mark.parametrize(("patterns", "model", "allowed"), [
    (None, "anything", True),  # no allow-list: every model
    ((), "qwen-0.5b", False),  # an empty one: none
    (("qwen-0.5b",), "qwen-0.5b", True),
    (("qwen-0.5b",), "qwen-1.5b", False),
    (("qwen-0.5b",), "fast", True),  # the alias of an allowed id
    (("fast",), "qwen-0.5b", True),  # the id of an allowed alias
    (("fast",), "fast", True),
    (("fast",), "embed", False),
    (("qwen-*",), "qwen-1.5b", True),
    (("qwen-*",), "fast", True),  # an alias whose target matches the pattern
    (("qwen-*",), "Qwen-1.5b", False),  # case-sensitive, as model ids are
    (("*-embed", "llama-?b"), "llama-8b", True),
    (("*-embed", "llama-?b"), "llama-70b", False),
    (("org/*",), "org/model-a", True),  # `*` crosses a slash, as fnmatch does
    (("org/[ab]*",), "org/b-model", True),
    (("org/[ab]*",), "org/c-model", False),
    (("m[1]",), "m[1]", True),  # an id with brackets matches itself, not only as a pattern
    (("*",), "whatever", True),
])
def test_allows(patterns, model, allowed):
    assert allows(patterns, model, resolve) is allowed


def _key(models):
    return ApiKey("k", "0" * 64, KeySettings(models=models), 0.0, 0.0)


def test_refusal_is_openais_not_found_and_none_without_a_key():
    assert refusal(None, "x", resolve) is None
    assert refusal(_key(None), "x", resolve) is None
    assert refusal(_key(("fast",)), "qwen-0.5b", resolve) is None
    err = refusal(_key(("fast",)), "gpt-x", resolve)
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert err.message == "The model 'gpt-x' does not exist or you do not have access to it."


def test_visible_filters_catalog_entries():
    entries = [{"id": i} for i in ("embed", "fast", "minilm-l6", "qwen-0.5b", "qwen-1.5b")]
    assert visible(None, entries, resolve) == entries
    assert visible(_key(None), entries, resolve) == entries
    assert [e["id"] for e in visible(_key(("fast",)), entries, resolve)] == ["fast", "qwen-0.5b"]
    assert [e["id"] for e in visible(_key(("qwen-*",)), entries, resolve)] == ["fast", "qwen-0.5b", "qwen-1.5b"]
    assert visible(_key(()), entries, resolve) == []
