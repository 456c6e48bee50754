"""A `max_tokens` no answer could reach (more than the model's whole context) is refused in every dialect.

OpenAI answers `max_tokens is too large: N. This model supports at most M completion tokens...`
(param `max_tokens`, or `max_completion_tokens` when that was sent), Anthropic `max_tokens: N > M,
which is the maximum allowed number of output tokens`. Before, cortex accepted it and generated to
the end of the context. A `max_tokens` within the context but beyond the room the prompt leaves is
still clamped (the answer ends with `finish_reason: "length"`). The check comes after the prompt's:
a prompt that does not fit still gets the overflow error that clients compact on (Claude Code sends
`max_tokens: 32000` whatever the model; tests/test_claude_code.py).
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.helpers import NO_EOS, one_node_fleet

MODEL = "tiny-short"  # --context 64
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with one_node_fleet(tmp_path_factory.mktemp("max-tokens"), models_dir, "--cpu-memory-mb", "2000",
                        load=(MODEL,)) as (gateway, _, loaded):
        yield gateway, loaded[MODEL]["context_size"]


@pytest.fixture(scope="module")
def oai(fleet):
    return openai.OpenAI(base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0)


def refused(call) -> openai.BadRequestError | anthropic.BadRequestError:
    with pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as info:
        call()
    return info.value


def says_too_large(err, field: str, asked: int, ctx: int) -> None:
    assert f"{field} is too large: {asked}." in err.message and f"context of {ctx} tokens" in err.message, err.message


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat(fleet, oai, field):
    ctx = fleet[1]
    err = refused(lambda: oai.chat.completions.create(model=MODEL, messages=USER, **{field: ctx + 1}))
    assert err.body["param"] == field and err.body["code"] == "invalid_value", err.body
    says_too_large(err, field, ctx + 1, ctx)


def test_completions_and_streams(fleet, oai):
    ctx = fleet[1]
    err = refused(lambda: oai.completions.create(model=MODEL, prompt="hi", max_tokens=10**6))
    says_too_large(err, "max_tokens", 10**6, ctx)
    # A stream is refused with a status too, before it opens.
    err = refused(lambda: list(oai.chat.completions.create(model=MODEL, messages=USER, max_tokens=ctx + 1,
                                                           stream=True)))
    assert err.status_code == 400


def test_anthropic(fleet):
    gateway, ctx = fleet
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)

    def stream():  # Claude Code's max_tokens, streamed as it streams (the SDK refuses it unstreamed)
        with client.messages.stream(model=MODEL, max_tokens=32000, messages=USER):
            pass

    err = refused(stream)
    assert err.body["error"]["type"] == "invalid_request_error", err.body
    says_too_large(err, "max_tokens", 32000, ctx)


def test_responses_names_max_output_tokens(fleet, oai):
    ctx = fleet[1]
    err = refused(lambda: oai.responses.create(model=MODEL, input="hi", max_output_tokens=ctx + 1))
    assert err.body["param"] == "max_output_tokens", err.body
    assert err.body["message"].startswith("max_output_tokens is too large"), err.body
    assert f"context of {ctx} tokens" in err.message


def test_within_the_context_it_is_clamped_to_the_room_left(fleet, oai):
    ctx = fleet[1]
    answer = oai.chat.completions.create(model=MODEL, messages=USER, max_tokens=ctx, logit_bias=NO_EOS)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == ctx
