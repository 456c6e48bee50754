"""The drafts of speculative decoding (`neuron.engine.drafts`), as pure functions of the text: where a
prediction or an n-gram says the answer goes on, and how a draft's length follows what is accepted."""

from __future__ import annotations

import pytest

from neuron.engine.drafts import EXPLORE_EVERY, PAUSE_MAX, Drafter, TokenText
from neuron.shared.errors import ApiError
from neuron.shared.speculative import MAX_DRAFT, SpecConfig


def test_token_text_finds_whole_tokens_only():
    text = TokenText([1, 256, 3, 1, 256])  # 256's bytes hold a 1 at an odd offset: never a match
    assert text.find([1, 256]) == 0 and text.find([1, 256], 1) == 3 and text.find([256, 1]) == -1
    assert text.rfind([1, 256], 5) == 3 and text.rfind([1, 256], 4) == 0 and text.rfind([7], 5) == -1
    odd = TokenText([0x01000000, 0x00000001])  # bytes 00 00 00 01 01 00 00 00: [1] would match at byte 3
    assert odd.find([1]) == 1 and odd.rfind([1], 2) == 1
    text.extend([3])
    assert len(text) == 6 and text.rfind([256, 3], 6) == 4


def follow(drafter: Drafter, tokens: list[int]) -> None:
    for token in tokens:
        drafter.emitted(token)


def test_a_prediction_is_drafted_in_order_and_found_again_after_a_difference():
    prediction = [10, 11, 12, 13, 14, 15, 16, 17]
    drafter = Drafter([1, 2], prediction, None)
    follow(drafter, [10])
    draft = drafter.propose(4)
    assert draft == [11, 12, 13, 14]
    drafter.start_verify(draft)
    follow(drafter, [11, 12, 99])  # 11 and 12 kept, then 99 sampled instead of 13
    assert drafter.predicted_accepted == 2 and drafter.predicted_rejected == 2  # whole before `verified`
    drafter.verified(4, 2)
    assert (drafter.proposed, drafter.accepted) == (4, 2)
    assert drafter.propose(8) == []  # 99 is nowhere in the prediction: a plain step
    follow(drafter, [14])  # the answer is back on the prediction's text
    assert drafter.propose(8) == [15, 16, 17][: drafter.length]
    assert Drafter([1], [5, 6], None).propose(0) == []


def test_prompt_lookup_drafts_what_followed_the_last_tokens_earlier():
    drafter = Drafter([7, 8, 9, 4, 5, 7, 8], None, SpecConfig(max_draft=3, ngram_max=2))
    assert drafter.propose(8) == [9, 4, 5]  # "7 8" came before, followed by 9 4 5
    follow(drafter, [6])
    assert drafter.propose(8) == []  # "8 6" and "6" never came before
    assert Drafter([1, 2, 3], None, SpecConfig()).propose(8) == []


def test_prompt_lookup_keeps_to_the_passage_the_answer_copies():
    # "3 4" comes twice; the answer copies the first passage, so its draft goes on from there (5), not from
    # the last place "3 4" came (7), and after the answer leaves the passage a new lookup is made.
    drafter = Drafter([1, 2, 3, 4, 5, 9, 3, 4, 7, 8, 0], None, SpecConfig(max_draft=3, ngram_max=2))
    follow(drafter, [1, 2])
    assert drafter.propose(8) == [3, 4, 5]
    follow(drafter, [3, 4])
    assert drafter.propose(8) == [5, 9, 3]
    follow(drafter, [6])  # off the passage: "4 6" and "6" never came before
    assert drafter.propose(8) == []
    follow(drafter, [7])
    assert drafter.propose(8) == [8, 0, 1]


def test_the_draft_length_follows_what_is_accepted():
    drafter = Drafter([1], list(range(100, 200)), None)
    assert drafter.length == MAX_DRAFT
    drafter.verified(16, 3)
    assert drafter.length == 4
    drafter.verified(4, 4)
    assert drafter.length == 8
    pauses = []
    for _ in range(8):  # rejected outright, again and again: rests of 1, 2, 4 ... steps
        drafter.verified(1, 0)
        pauses.append(drafter.pause)
        while drafter.pause:
            assert drafter.propose(8) == []
    assert pauses == [1, 2, 4, 8, 16, 32, PAUSE_MAX, PAUSE_MAX] and drafter.length == 1


@pytest.mark.parametrize(("value", "words"), [
    ({"method": "medusa"}, "speculative.method"), ({"max_draft": 17}, "from 1 to 16"),
    ({"ngram_max": True}, "speculative.ngram_max"), ([], "expected an object"), ({"x": 1}, "unknown field 'x'"),
    ({"method": "draft"}, "needs the id of a GGUF"), ({"method": "draft", "draft_model": 3}, "needs the id"),
    ({"draft_model": "small"}, 'only with method "draft"'),
])
def test_a_bad_setting_names_its_field(value, words):
    with pytest.raises(ApiError) as refused:
        SpecConfig.from_dict(value)
    assert words in refused.value.message and refused.value.status == 400


def test_settings_round_trip():
    spec = SpecConfig.from_dict({"method": "ngram", "max_draft": 4})
    assert spec == SpecConfig(max_draft=4) and SpecConfig.from_dict(spec.to_dict()) == spec
    assert SpecConfig.from_dict(None) is None
    drafted = SpecConfig.from_dict({"method": "draft", "draft_model": "smollm2-small"})
    assert drafted.to_dict()["draft_model"] == "smollm2-small" and SpecConfig.from_dict(drafted.to_dict()) == drafted


def test_a_draft_is_cut_to_what_pays_and_still_tried_now_and_then():
    drafter = Drafter([1, 2, 3, 1, 2], None, SpecConfig(max_draft=4, ngram_max=2))
    assert drafter.propose(8, lambda p, n: n) == [3, 1, 2]  # "1 2" came before: what followed it
    drafter.verified(3, 3)
    assert drafter.chance("model") == pytest.approx(4 / 5)  # 1 kept, 1 missed as prior; 3 more kept
    never = [drafter.propose(8, lambda p, n: 0) for _ in range(EXPLORE_EVERY + 1)]
    assert len(never[0]) == 1 and len(never[-1]) == 1  # one token the first time, then now and then
    assert never[1:-1] == [[]] * (EXPLORE_EVERY - 1)
    predicted = Drafter([1], [5, 6, 7, 8], None)
    predicted.emitted(5)
    seen = []
    predicted.propose(8, lambda p, n: seen.append(p) or 2)
    assert seen == [pytest.approx(0.8)]  # a prediction is believed before it has a record
