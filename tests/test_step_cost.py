"""How long a draft may be (`neuron.engine.step_cost`): from a fit of step seconds against step size,
the draft length that yields the most tokens a second, none where the device pays for every token."""

from __future__ import annotations

import pytest

from neuron.engine.step_cost import StepCost, expected_tokens


def fitted(a: float, b: float, sizes=(1, 3, 9, 1, 5, 2, 8)) -> StepCost:
    cost = StepCost()
    for _ in range(10):
        for n in sizes:
            cost.observe(n, a + b * n)
    return cost


def test_the_fit_recovers_fixed_and_per_token_costs():
    a, b = fitted(0.010, 0.002).fit()
    assert a == pytest.approx(0.010) and b == pytest.approx(0.002)
    assert StepCost().fit() is None
    lone = StepCost()
    for _ in range(5):
        lone.observe(1, 0.004)  # one size only: half of it taken as fixed, half per token
    assert lone.fit() == pytest.approx((0.002, 0.002))


def test_expected_tokens_of_a_draft():
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_a_fixed_cost_device_drafts_long_and_a_per_token_one_does_not():
    gpu = fitted(0.020, 0.00001)  # a step costs its weights' read, hardly its tokens
    assert gpu.best_length(0.7, 8, tokens=1, others=0) == 8
    cpu = fitted(0.0005, 0.010)  # each token costs real compute
    assert cpu.best_length(0.7, 8, tokens=1, others=0) == 0
    assert cpu.best_length(0.999, 8, tokens=1, others=0) > 0  # a prediction right almost always still pays


def test_a_busy_batch_makes_a_draft_cost_the_others_too():
    even = fitted(0.010, 0.002)
    alone = even.best_length(0.6, 8, tokens=1, others=0)
    crowded = even.best_length(0.6, 8, tokens=8, others=7)
    assert alone > crowded
    assert even.best_length(0.6, 0, tokens=1, others=0) == 0 and StepCost().best_length(0.6, 3, 1, 0) == 3


def test_one_slow_step_does_not_undo_the_fit():
    """A step far slower than the fit (the process descheduled on a busy machine) counts only as OUTLIER
    times what the fit says; taken as it was, it would make every draft look unpaid."""
    cost = fitted(0.010, 0.001)
    before = cost.best_length(0.9, 8, tokens=1, others=0)
    cost.observe(9, 3.0)  # a 9-token step that took 3 s instead of 0.019 s
    a, b = cost.fit()
    assert b < 0.003 and cost.best_length(0.9, 8, tokens=1, others=0) == before > 0


def test_a_padded_batch_drafts_one_length_for_every_row():
    cost = fitted(0.010, 0.002)
    lone = cost.best_padded_length([(0.9, 6)], rows=1, limit=6)
    assert lone == 6  # a lone row's draft was already cut to what pays: kept
    few = cost.best_padded_length([(0.9, 6)], rows=8, limit=6)  # one row drafting, seven paying its padding
    many = cost.best_padded_length([(0.9, 6)] * 8, rows=8, limit=6)
    assert few < many and cost.best_padded_length([], rows=4, limit=0) == 0
