"""Budget decisions, pure (cortex_gateway/budgets.py): windows and their periods against a clock the test sets,
the worst case of a request, the Retry-After until the window rolls, the reservation rule, and what a TPM
bucket's level tells the client (cortex_gateway/tpm.py) with the rate-limit headers' forms. The bucket
itself is a row of the state database: tests/test_tpm_shared.py."""

from __future__ import annotations

import calendar

import pytest

from cortex_gateway import budgets
from cortex_gateway.tpm import TpmRefusal, anthropic_headers, decide, go_duration, openai_headers, state_of


def at(text: str) -> float:
    """Seconds since the epoch of a UTC time written YYYY-MM-DDTHH:MM:SS."""
    date, clock = text.split("T")
    return float(calendar.timegm((*map(int, date.split("-")), *map(int, clock.split(":")))))


@pytest.mark.parametrize("spec, now, label, start, rolls", [
    ("1d", "2026-12-02T04:05:06", "2026-12-02", "2026-12-02T00:00:00", "2026-12-03T00:00:00"),
    ("1d", "2026-12-02T23:59:59", "2026-12-02", "2026-12-02T00:00:00", "2026-12-03T00:00:00"),
    ("1d", "2026-12-03T00:00:00", "2026-12-03", "2026-12-03T00:00:00", "2026-12-04T00:00:00"),
    ("1h", "2026-12-02T04:59:59", "2026-12-02T04", "2026-12-02T04:00:00", "2026-12-02T05:00:00"),
    ("month", "2026-12-31T23:59:59", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2027-01-01T00:00:00", "2027-01", "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
    ("month", "2028-02-29T12:00:00", "2028-02", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    # 30 days from the epoch: 2026-12-02 is day 20,789 = 30 * 692 + 29.
    ("30d", "2026-12-02T04:05:06", "30d@2026-11-03T00:00:00", "2026-11-03T00:00:00", "2026-12-03T00:00:00"),
    ("10s", "2026-12-02T04:05:06", "10s@2026-12-02T04:05:00", "2026-12-02T04:05:00", "2026-12-02T04:05:10"),
])
def test_periods(spec, now, label, start, rolls):
    period = budgets.parse_window(spec).period(at(now))
    assert (period.label, period.start, period.rolls_at) == (label, at(start), at(rolls))


def test_a_window_rolls_into_an_empty_period_and_retry_after_counts_to_it():
    window = budgets.parse_window("1h")
    before, after = window.period(at("2026-12-02T04:59:30")), window.period(at("2026-12-02T05:00:00"))
    assert before.label != after.label
    assert before.retry_after(at("2026-12-02T04:59:30")) == 30
    assert before.retry_after(at("2026-12-02T04:59:59") + 0.5) == 1  # never 0, which says nothing
    month = budgets.parse_window("month").period(at("2026-12-31T23:00:00"))
    assert month.retry_after(at("2026-12-31T23:00:00")) == 3600


@pytest.mark.parametrize("spec", ["", "1w", "0d", "-1h", "1.5h", "monthly", None, 3600])
def test_a_window_that_is_none_says_what_is_accepted(spec):
    with pytest.raises(ValueError, match="budget_window: expected 1h, 1d, 30d, month"):
        budgets.parse_window(spec)


@pytest.mark.parametrize("body, context, prompt, worst", [
    ({"max_tokens": 16}, 512, 20, 36),  # prompt + max_tokens
    ({"max_completion_tokens": 16, "max_tokens": 99}, 512, 20, 36),  # the newer field first
    ({"max_tokens": 600}, 512, 20, 512),  # clamped to the room the prompt leaves
    ({}, 512, 20, 512),  # no limit: to the end of the context
    ({"max_tokens": 16, "n": 3}, 512, 20, 68),  # each choice may write max_tokens
    ({"max_tokens": 16}, 512, None, 512),  # the prompt not counted: the context bounds it
    ({"max_tokens": 16, "n": 3}, 512, None, 544),  # ... plus the other choices' max_tokens
    ({}, 0, None, None),  # no context, no count, no limit: no bound
    ({"max_tokens": 16}, 0, 20, 36),  # no context known: the count and the limit bound it
    ({}, 0, 20, None),
])
def test_chat_worst_case(body, context, prompt, worst):
    assert budgets.chat_worst_case(body, context, prompt) == worst


def test_embeddings_and_completions_worst_cases():
    assert budgets.request_worst_case("embeddings", {"input": "hello"}, 512) == 512
    assert budgets.request_worst_case("embeddings", {"input": ["a", "b"]}, 512) == 1024
    assert budgets.request_worst_case("embeddings", {"input": [1, 2, 3]}, 512) == 3  # token ids: counted
    assert budgets.request_worst_case("embeddings", {"input": [[1, 2], [3]]}, 512) == 3
    assert budgets.request_worst_case("completions", {"prompt": "hi", "max_tokens": 8}, 512) == 512
    assert budgets.request_worst_case("completions", {"prompt": [5, 6], "max_tokens": 8}, 512) == 10
    assert budgets.request_worst_case("completions", {"prompt": ["a", "b"], "max_tokens": 8, "n": 2}, 512) == 1040
    assert budgets.request_worst_case("chat", {"max_tokens": 8}, 512, 10) == 18
    # An image request reads its prompt once whatever its n (the neuron bills it so): n does not multiply.
    assert budgets.request_worst_case("images", {"prompt": "a cat", "n": 4}, 77) == 77
    assert budgets.request_worst_case("images", {"prompt": "a cat"}, 0) is None  # no context known: no bound


@pytest.mark.parametrize("settled, reserved, tokens, budget, ok", [
    (0, 0, 100, 100, True), (0, 0, 101, 100, False), (50, 40, 10, 100, True), (50, 40, 11, 100, False),
    (10**9, 0, 10**9, None, True), (100, 0, 0, 100, True),
])
def test_the_reservation_rule(settled, reserved, tokens, budget, ok):
    assert budgets.fits(settled, reserved, tokens, budget) is ok


def test_a_budget_refusal_says_what_is_used_what_is_needed_and_when_it_rolls():
    period = budgets.parse_window("1d").period(at("2026-12-02T04:00:00"))
    text = budgets.budget_refusal((80, 15), 10, 100, "1d", period)
    assert "80 of 100 tokens used" in text and "15 held" in text and "up to 10" in text
    assert "rolls at 2026-12-03T00:00:00Z" in text
    assert "lower max_tokens" in budgets.budget_refusal((0, 0), 500, 100, "1d", period)
    assert "token budget is 0 tokens per 1d" in budgets.budget_refusal((0, 0), 5, 0, "1d", period)


def test_tpm_a_take_and_a_refusal_as_the_client_hears_them():
    state = decide(600, 400, True, 200.0)  # 600 a minute (10 a second), 200 left after taking 400
    assert (state.limit, state.remaining, state.reset_s) == (600, 200, 40.0)
    refused = decide(600, 300, False, 200.0)
    assert isinstance(refused, TpmRefusal) and refused.retry_after == pytest.approx(10.0)
    assert refused.state.remaining == 200 and "retry in 10.0 s" in refused.message()
    never = decide(600, 601, False, 600.0)
    assert isinstance(never, TpmRefusal) and never.retry_after is None and "lower max_tokens" in never.message()


def test_tpm_a_bucket_below_zero_says_none_left_and_waits_longer():
    state = state_of(600, -60.0)  # a request used more than it took: charged, the bucket below zero
    assert (state.remaining, state.reset_s) == (0, 66.0)
    assert decide(600, 60, False, -60.0).retry_after == pytest.approx(12.0)


@pytest.mark.parametrize("seconds, text", [
    (0, "0ms"), (0.25, "250ms"), (1, "1s"), (7.5, "7.5s"), (60, "1m0s"), (360, "6m0s"), (90.25, "1m30.25s"),
    (3723, "1h2m3s"),
])
def test_openai_reset_is_a_go_duration(seconds, text):
    assert go_duration(seconds) == text


def test_the_headers_of_each_dialect():
    state = state_of(600, 500.0)
    assert openai_headers(state) == {"x-ratelimit-limit-tokens": "600", "x-ratelimit-remaining-tokens": "500",
                                     "x-ratelimit-reset-tokens": "10s"}
    assert anthropic_headers(state, at("2026-12-02T04:00:00")) == {
        "anthropic-ratelimit-tokens-limit": "600", "anthropic-ratelimit-tokens-remaining": "500",
        "anthropic-ratelimit-tokens-reset": "2026-12-02T04:00:10Z"}
