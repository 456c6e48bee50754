"""No silent drops: every field the official SDKs can send has a rule, and the rules are what docs/api.md shows.

The SDKs' request types are walked (their TypedDict annotations, streaming
variants included), so a field a new SDK release adds fails this test until
someone decides what cortex does with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from anthropic.types import message_count_tokens_params, message_create_params
from anthropic.types.beta import message_count_tokens_params as beta_count_tokens_params
from anthropic.types.beta import message_create_params as beta_message_create_params
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params

from cortex_gateway.anthropic.fields import COUNT_TOKENS, MESSAGES
from cortex_gateway.field_tables import all_policies, markdown
from cortex_gateway.responses.fields import POLICIES as RESPONSES_POLICIES
from neuron.shared.embedding_fields import POLICIES as EMBEDDING_POLICIES
from neuron.shared.errors import ApiError
from neuron.shared.field_policy import HONOURED, IGNORED, REFUSED
from neuron.shared.openai_fields import CHAT, COMPLETIONS

ROOT = Path(__file__).resolve().parent.parent


def sdk_fields(*types) -> set[str]:
    out: set[str] = set()
    for kind in types:
        for klass in kind.__mro__:
            out |= set(getattr(klass, "__annotations__", {}))
    return out


@pytest.mark.parametrize("policy, types", [
    (CHAT, [chat_create_params.CompletionCreateParamsStreaming, chat_create_params.CompletionCreateParamsNonStreaming]),
    (COMPLETIONS, [completion_create_params.CompletionCreateParamsStreaming,
                   completion_create_params.CompletionCreateParamsNonStreaming]),
    (MESSAGES, [message_create_params.MessageCreateParamsStreaming,
                beta_message_create_params.MessageCreateParamsStreaming]),
    (COUNT_TOKENS, [message_count_tokens_params.MessageCountTokensParams,
                    beta_count_tokens_params.MessageCountTokensParams]),
    (EMBEDDING_POLICIES[0], [embedding_create_params.EmbeddingCreateParams]),
    (RESPONSES_POLICIES[0], [response_create_params.ResponseCreateParamsStreaming]),
], ids=lambda p: getattr(p, "dialect", ""))
def test_every_sdk_field_has_a_rule(policy, types):
    fields = sdk_fields(*types)
    assert len(fields) >= 5, "the SDK's request types have no annotations: this walk found nothing"
    missing = sorted(fields - set(policy.rules))
    assert not missing, f"{policy.dialect}: no rule for {missing}; decide: honoured, ignored (why) or refused"


def test_every_rule_says_why_unless_honoured():
    for policy in all_policies():
        for key, rule in policy.rules.items():
            assert rule.kind in (HONOURED, IGNORED, REFUSED), (policy.dialect, key)
            if rule.kind != HONOURED:
                assert len(rule.note) > 10, f"{policy.dialect}.{key}: say why it is {rule.kind}"


def test_unknown_and_refused_fields_get_a_400_naming_them():
    with pytest.raises(ApiError) as unknown:
        CHAT.check({"model": "m", "temprature": 0.5})
    assert unknown.value.param == "temprature" and "Unrecognized request argument supplied: temprature" \
        in unknown.value.message
    with pytest.raises(ApiError) as refused:
        CHAT.check({"model": "m", "audio": {"voice": "alloy"}})
    assert refused.value.param == "audio" and "audio" in refused.value.message
    CHAT.check({"model": "m", "audio": None, "user": "u1", "store": True})  # unset refused, ignored: no error


def test_docs_show_the_tables_as_the_code_has_them():
    """docs/api.md embeds `python -m cortex_gateway.field_tables`; regenerate it when a rule changes."""
    doc = (ROOT / "docs" / "api.md").read_text()
    assert markdown() in doc
