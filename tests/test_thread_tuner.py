"""The thread counts a model's llama.cpp steps run on (`neuron.engine.thread_tuner`): tried in turn,
the fastest kept, kept longer while it keeps winning, and changed when the machine changes."""

from __future__ import annotations

from neuron.engine.thread_tuner import HOLD_MAX, HOLD_MIN, TRIAL_STEPS, ThreadTuner, ladder


def run(tuner: ThreadTuner, seconds_per_token: dict[int, float], steps: int, tokens: int = 8) -> list[int]:
    """`steps` steps on a machine where each count costs what the table says; the counts used, in order."""
    used = []
    for _ in range(steps):
        threads = tuner.choice()
        used.append(threads)
        tuner.observe(threads, tokens, tokens * seconds_per_token[threads])
    return used


def test_the_ladder_halves_down_to_one():
    assert ladder(16) == (16, 8, 4) and ladder(2) == (2, 1) and ladder(1) == (1,) and ladder(3) == (3, 1)


def test_a_single_count_is_never_tuned():
    tuner = ThreadTuner((1,))
    assert run(tuner, {1: 0.01}, 10) == [1] * 10


def test_the_fastest_count_is_kept_after_a_trial_in_turn():
    tuner = ThreadTuner((2, 1))
    used = run(tuner, {2: 0.010, 1: 0.001}, 2 * TRIAL_STEPS)  # one core is held elsewhere: 1 thread wins
    assert used == [2, 1] * TRIAL_STEPS
    assert run(tuner, {2: 0.010, 1: 0.001}, HOLD_MIN) == [1] * HOLD_MIN
    assert tuner.rate(1) > tuner.rate(2)


def test_a_winner_is_kept_longer_each_time_and_a_change_is_followed():
    tuner = ThreadTuner((2, 1))
    quiet = {2: 0.001, 1: 0.0018}
    holds = []
    for _ in range(5):
        run(tuner, quiet, 2 * TRIAL_STEPS)
        holds.append(tuner.hold)
        run(tuner, quiet, tuner.hold)
    assert holds == [HOLD_MIN * 2, HOLD_MIN * 4, HOLD_MIN * 8, HOLD_MIN * 16, HOLD_MIN * 32]
    assert tuner.current == 2
    busy = {2: 0.02, 1: 0.002}  # then another process takes a core
    run(tuner, busy, 2 * TRIAL_STEPS)
    assert tuner.current == 1 and tuner.hold == HOLD_MIN
    while tuner.hold < HOLD_MAX:
        run(tuner, busy, tuner.hold + 2 * TRIAL_STEPS)
    assert tuner.hold == HOLD_MAX


def test_an_empty_step_teaches_nothing():
    tuner = ThreadTuner((2, 1))
    assert tuner.observe(2, 0, 1.0) is False and tuner.choice() == 2 and tuner.rate(2) == 0.0
