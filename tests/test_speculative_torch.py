"""Speculative decoding on the torch backend (issue 28), against a real `cortex neuron` with the official
openai client. The batch is one left-padded cache, so a step with drafts pads every row to the longest
draft and masks out the cells of what is not kept (`torch_holes`): the answers must still be exactly the
ones without drafts, alone and beside other rows with other drafts, greedy and sampled with a seed, with
logprobs, a grammar and n > 1, and a later request that reuses a drafted answer's cache must read it right.
"""

from __future__ import annotations

import concurrent.futures

import openai
import pytest

from tests.helpers import NO_EOS, http_json, metric, start_neuron

PLAIN, LOOKUP, FRESH = "tiny-torch", "tiny-torch-lookup", "tiny-torch-fresh"  # FRESH: never drafts, for reference
OTHER = "tiny-torch-other"  # never loaded
ASK = [{"role": "user", "content": "Write the function again, with a docstring."}]
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def neuron(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("speculative-torch-models")
    for name in (PLAIN, LOOKUP, FRESH, OTHER):
        (models / name).symlink_to(models_dir / "tiny-hf")
    with start_neuron(tmp_path_factory.mktemp("speculative-torch"), models, "--cpu-memory-mb", "6000") as proc:
        for load in ({"model": PLAIN, "parallel": 4}, {"model": FRESH, "parallel": 4},
                     {"model": LOOKUP, "speculative": {"method": "ngram", "max_draft": 6}}):
            status, body = http_json("POST", proc.url + "/models/load", load)
            assert status == 200 and body["backend"] == "torch", body
        yield proc


@pytest.fixture(scope="module")
def client(neuron):
    return openai.OpenAI(base_url=neuron.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client, model: str = PLAIN, prediction: str | None = None, messages=ASK, **extra):
    body = {"prediction": {"type": "content", "content": prediction}} if prediction is not None else {}
    args = {"max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS, **extra}
    return client.chat.completions.create(model=model, messages=messages, extra_body=body, **args)


def drafts_of(neuron, model: str) -> tuple[float, float]:
    series = 'cortex_neuron_draft_tokens_total{{model="{}",outcome="{}"}}'
    return metric(neuron, series.format(model, "proposed")), metric(neuron, series.format(model, "accepted"))


def test_a_right_prediction_is_accepted_and_changes_nothing(client, neuron):
    plain = chat(client)
    text = plain.choices[0].message.content
    before = drafts_of(neuron, PLAIN)
    again = chat(client, prediction=text)
    assert again.choices[0].message.content == text
    details = again.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and again.usage.completion_tokens == plain.usage.completion_tokens
    after = drafts_of(neuron, PLAIN)
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens == after[0] - before[0]
    assert details.accepted_prediction_tokens == after[1] - before[1]
    half = len(text) // 2
    wrong = chat(client, prediction=text[:half] + "#!%& nothing like it" + text[half:])
    assert wrong.choices[0].message.content == text and wrong.usage.completion_tokens_details.rejected_prediction_tokens


def test_sampled_logprobs_a_grammar_and_several_choices_are_kept(client):
    for seed in (1, 2):
        free = chat(client, temperature=0.9, seed=seed).choices[0].message.content
        assert chat(client, prediction=free, temperature=0.9, seed=seed).choices[0].message.content == free
    plain = chat(client, logprobs=True, top_logprobs=2)
    guessed = chat(client, prediction=plain.choices[0].message.content, logprobs=True, top_logprobs=2)
    for a, b in zip(guessed.choices[0].logprobs.content, plain.choices[0].logprobs.content, strict=True):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-3)
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    shaped = chat(client, response_format=schema, max_tokens=24).choices[0].message.content
    assert chat(client, response_format=schema, max_tokens=24, prediction=shaped).choices[0].message.content == shaped
    two = chat(client, n=2, temperature=0.8, seed=5)
    again = chat(client, n=2, temperature=0.8, seed=5, prediction=two.choices[0].message.content)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]


def test_rows_with_different_drafts_side_by_side_give_their_lone_answers(client):
    """Four rows at once: a right prediction, a half-wrong one, a useless one and none. Each step pads
    them to the longest draft, and many steps of holes make the batch compact its cache; every answer is
    still the one the same request gets alone."""
    asks = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(4)]
    alone = [chat(client, messages=m, max_tokens=120).choices[0].message.content for m in asks]
    guesses = [alone[0], alone[1][:40] + "wrong turn" + alone[1][40:], "nothing the model says " * 8, None]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: chat(client, messages=asks[i], max_tokens=120, prediction=guesses[i]),
                                 range(4)))
    assert [a.choices[0].message.content for a in together] == alone
    # How many drafts the step-cost model sends depends on the machine's load (a busy one sends fewer);
    # that the right prediction was drafted and mostly kept does not.
    details = together[0].usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0
    assert details.accepted_prediction_tokens >= 2 * details.rejected_prediction_tokens


def test_a_drafted_answers_cache_is_reused_right(client, neuron):
    """A conversation's next turn reuses the cells its drafted answer left (holes and all, in the batch):
    the answer equals the one from a model that never drafted and computed everything itself."""
    first = chat(client, model=FRESH).choices[0].message.content
    drafted = chat(client, prediction=first)
    assert drafted.choices[0].message.content == first
    turn = [*ASK, {"role": "assistant", "content": first}, {"role": "user", "content": "And once more, shorter."}]
    reused = chat(client, messages=turn)
    assert reused.usage.prompt_tokens_details.cached_tokens > 0
    assert reused.choices[0].message.content == chat(client, model=FRESH, messages=turn).choices[0].message.content


def test_prompt_lookup_on_torch_drafts_from_the_text_and_changes_nothing(client, neuron):
    repeating = [{"role": "user", "content": CODE * 3}]
    plain = chat(client, messages=repeating)
    before = drafts_of(neuron, LOOKUP)
    looked = chat(client, model=LOOKUP, messages=repeating)
    assert looked.choices[0].message.content == plain.choices[0].message.content
    proposed, accepted = (b - a for a, b in zip(before, drafts_of(neuron, LOOKUP), strict=True))
    assert proposed > 0 and 0 <= accepted <= proposed
    model = next(m for m in http_json("GET", neuron.url + "/health")[1]["models"] if m["id"] == LOOKUP)
    assert model["drafted"] >= proposed


def test_a_draft_model_on_torch_is_a_clear_400(neuron):
    status, body = http_json("POST", neuron.url + "/models/load", {
        "model": OTHER, "backend": "torch", "speculative": {"method": "draft", "draft_model": PLAIN}})
    assert status == 400 and "a draft model runs beside the target on llama.cpp, not torch" in body["error"]["message"]
