"""A context overflow is recognised by the client libraries that key their fallbacks on its text.

openai 3.x puts only the error's message in the exception's text (`str(e)`), no longer the body with
its `code`, so the libraries that read `str(e)` see the message alone. Their predicates, as their
sources have them:

- langchain-openai 1.7 (`chat_models/base.py`, `_handle_openai_bad_request`), which raises its
  `ContextOverflowError` (what LangChain's summarisation middleware falls back on):
  `"context_length_exceeded" in str(e) or "prompt is too long" in e.message or ...`
- litellm (`litellm_core_utils/exception_mapping_utils.py`,
  `ExceptionCheckers.is_error_str_context_window_exceeded`), which raises `ContextWindowExceededError`
  (what its context-window fallbacks act on): lower-cased substrings, among them
  "this model's maximum context length is" and "prompt is too long".

The overflow goes through the gateway with the official openai client, on every OpenAI-dialect route
that can overflow.
"""

from __future__ import annotations

import openai
import pytest

from tests.helpers import one_node_fleet

MODEL = "tiny-short"  # --context 64


def langchain_openai_overflow(e: openai.BadRequestError) -> bool:
    return ("context_length_exceeded" in str(e) or "Input tokens exceed the configured limit" in e.message
            or "prompt is too long" in e.message or "ContextWindowExceededError" in e.message)


def litellm_overflow(error_str: str) -> bool:
    lower = error_str.lower()
    return any(s in lower for s in ("this model's maximum context length is", "prompt is too long",
                                    '"code": "context_length_exceeded"', "exceeds the available context size"))


@pytest.fixture(scope="module")
def client(tmp_path_factory, models_dir):
    with one_node_fleet(tmp_path_factory.mktemp("overflow"), models_dir, "--cpu-memory-mb", "2000",
                        load=(MODEL,)) as (gateway, _, loaded):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        yield client, loaded[MODEL]["context_size"]


def overflow(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    return info.value


@pytest.mark.parametrize("route", ["chat", "completions", "embeddings"])
def test_both_libraries_see_an_overflow(client, route):
    client, ctx = client
    long = "word " * (ctx + 10)
    calls = {"chat": lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}]),
             "completions": lambda: client.completions.create(model=MODEL, prompt=long),
             "embeddings": lambda: client.embeddings.create(model=MODEL, input=[long])}
    err = overflow(calls[route])
    assert err.code == "context_length_exceeded", err.body
    assert langchain_openai_overflow(err), f"langchain-openai would not raise ContextOverflowError on {str(err)!r}"
    assert litellm_overflow(str(err)), f"litellm would not raise ContextWindowExceededError on {str(err)!r}"
    # OpenAI's own wording stays, figures included.
    assert f"This model's maximum context length is {ctx} tokens. However, your " in err.message
