"""vLLM's common extension fields, which clients written for vLLM send, on both backends.

`ignore_eos`, `min_tokens`, `include_stop_str_in_output` and `skip_special_tokens` are honoured as
vLLM honours them (`repetition_penalty` already was, as llama.cpp's `repeat_penalty`); what the
backends cannot do (beam search, vLLM's older `guided_*` fields, prompt logprobs) is a 400 that names
the field and says what to send instead. An end token is made the likely next token with
`logit_bias`, so that what holds it back is the field under test, not chance.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuron.engine.generation import hold_end
from tests.neuron_inprocess import IN_MODULE_LOOP

BACKENDS = ["tiny-gguf", "tiny-hf"]
USER = [{"role": "user", "content": "hi"}]
EOS_LIKELY = {"0": 100, "2": 100}  # both end tokens of the tiny models (<|endoftext|>, <|im_end|>)
SCRIPT = "alpha beta gamma delta"


@pytest.fixture(scope="module")
def client(inprocess_neuron):
    return inprocess_neuron.openai


async def chat(client, model: str, **extra):
    known = {k: extra.pop(k) for k in ("max_tokens", "stop", "temperature", "logit_bias", "seed") if k in extra}
    return await client.chat.completions.create(model=model, messages=USER, extra_body=extra, **known)


async def streamed(client, model: str, **extra) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a stream."""
    known = {k: extra.pop(k) for k in ("max_tokens", "stop", "temperature", "logit_bias", "seed") if k in extra}
    chunks = [c async for c in await client.chat.completions.create(
        model=model, messages=USER, stream=True, extra_body=extra, stream_options={"include_usage": True}, **known)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    return text, finish, chunks[-1].usage.completion_tokens


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_ignore_eos_runs_past_the_end_token(client, model):
    ended = await chat(client, model, max_tokens=6, temperature=0, logit_bias=EOS_LIKELY)
    assert (ended.choices[0].finish_reason, ended.usage.completion_tokens) == ("stop", 0)
    ran = await chat(client, model, max_tokens=6, temperature=0, logit_bias=EOS_LIKELY, ignore_eos=True)
    assert (ran.choices[0].finish_reason, ran.usage.completion_tokens) == ("length", 6)
    assert ran.choices[0].message.content == ""  # the end tokens are control tokens: skipped from the text


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_min_tokens_holds_the_end_token_back(client, model):
    held = await chat(client, model, max_tokens=20, temperature=0, logit_bias=EOS_LIKELY, min_tokens=5)
    assert (held.choices[0].finish_reason, held.usage.completion_tokens) == ("stop", 5)
    _, finish, tokens = await streamed(client, model, max_tokens=20, temperature=1.0, seed=3, logit_bias=EOS_LIKELY,
                                       min_tokens=5)
    assert (finish, tokens) == ("stop", 5)


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_min_tokens_holds_stop_sequences_back(client, model):
    """vLLM checks stop sequences only once min_tokens are out: "a" would end the answer at once."""
    assert (await chat(client, model, stop=["a"], cortex_script=SCRIPT)).choices[0].message.content == ""
    answer = await chat(client, model, stop=["a"], cortex_script=SCRIPT, min_tokens=3)
    text = answer.choices[0].message.content
    assert text and SCRIPT.startswith(text) and len(text) < len(SCRIPT), text
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens >= 3


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_include_stop_str_in_output(client, model):
    assert (await chat(client, model, stop=["gam"], cortex_script=SCRIPT)).choices[0].message.content == "alpha beta "
    kept = await chat(client, model, stop=["gam"], cortex_script=SCRIPT, include_stop_str_in_output=True)
    assert (kept.choices[0].message.content, kept.choices[0].finish_reason) == ("alpha beta gam", "stop")
    text, finish, _ = await streamed(client, model, stop=["gam"], cortex_script=SCRIPT, include_stop_str_in_output=True)
    assert (text, finish) == ("alpha beta gam", "stop")


@IN_MODULE_LOOP
@pytest.mark.parametrize("model", BACKENDS)
async def test_skip_special_tokens(client, model):
    script = "hi<|im_start|>there"
    assert (await chat(client, model, cortex_script=script)).choices[0].message.content == "hithere"
    skipped = await chat(client, model, cortex_script=script, skip_special_tokens=True)
    assert skipped.choices[0].message.content == "hithere"
    shown = await chat(client, model, cortex_script=script, skip_special_tokens=False)
    assert shown.choices[0].message.content == script
    text, _, _ = await streamed(client, model, cortex_script=script, skip_special_tokens=False)
    assert text == script


@IN_MODULE_LOOP
async def test_repetition_penalty_is_accepted(client):
    assert (await chat(client, "tiny-gguf", max_tokens=3, repetition_penalty=1.3)).usage.completion_tokens >= 0


@IN_MODULE_LOOP
@pytest.mark.parametrize("body, param, says", [
    ({"min_tokens": 9, "max_tokens": 4}, "min_tokens", "min_tokens: 9 is more than max_tokens=4"),
    ({"min_tokens": -1}, "min_tokens", "min_tokens"),
    ({"ignore_eos": "yes"}, "ignore_eos", "expected true or false"),
    ({"ignore_eos": True, "response_format": {"type": "json_object"}}, "ignore_eos", "grammar decides"),
    ({"use_beam_search": True}, "use_beam_search", "not supported here"),
    ({"guided_json": {"type": "object"}}, "guided_json", "response_format"),
    ({"guided_choice": ["a", "b"]}, "guided_choice", "response_format"),
    ({"prompt_logprobs": 1}, "prompt_logprobs", "not supported here"),
])
async def test_what_cannot_be_done_is_a_400_naming_it(inprocess_neuron, body, param, says):
    status, answer = await inprocess_neuron.call("POST", "/v1/chat/completions",
                                                 {"model": "tiny-gguf", "messages": USER, **body})
    assert status == 400 and answer["error"]["param"] == param, answer
    assert says in answer["error"]["message"], answer


@IN_MODULE_LOOP
async def test_unset_refused_fields_pass(inprocess_neuron):
    """vLLM clients send their defaults: false and null are not asking for anything."""
    status, answer = await inprocess_neuron.call("POST", "/v1/chat/completions", {
        "model": "tiny-gguf", "messages": USER, "max_tokens": 2, "use_beam_search": False, "guided_json": None,
        "ignore_eos": False, "min_tokens": 0, "skip_special_tokens": True, "include_stop_str_in_output": False})
    assert status == 200, answer


@IN_MODULE_LOOP
async def test_completions_take_them_too(inprocess_neuron):
    status, answer = await inprocess_neuron.call("POST", "/v1/completions", {
        "model": "tiny-hf", "prompt": "hi", "max_tokens": 4, "temperature": 0, "logit_bias": EOS_LIKELY,
        "ignore_eos": True})
    assert status == 200 and answer["usage"]["completion_tokens"] == 4, answer


def test_hold_end_yields_to_a_grammar_that_must_end():
    logits = np.array([1.0, 5.0, 2.0, 0.5], dtype=np.float32)
    hold_end(logits, np.array([1, 3]))
    assert list(logits) == [1.0, -np.inf, 2.0, -np.inf]
    only_end = np.array([-np.inf, 5.0, -np.inf, -np.inf], dtype=np.float32)  # a grammar allows the end alone
    hold_end(only_end, np.array([1, 3]))
    assert list(only_end) == [-np.inf, 5.0, -np.inf, -np.inf]
