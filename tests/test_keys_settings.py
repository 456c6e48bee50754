"""The admin API's key bodies (cortex_gateway.key_settings): the budget window grammar and each field's checks."""

from __future__ import annotations

import pytest

from cortex_gateway.key_settings import create_body, update_body, window_seconds
from neuron.shared.errors import ApiError


@pytest.mark.parametrize(("window", "seconds"), [
    ("1h", 3600), ("24h", 86400), ("1d", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400), ("9999d", 9999 * 86400),
    ("month", None),
])
def test_windows(window, seconds):
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "0h", "0d", "1", "h", "1w", "1m", "1.5h", "-1d", "01d", "10000d", " 1d",
                                    "1d ", "1H", "Month", "months", "1h1d", 1, None])
def test_bad_windows(window):
    with pytest.raises(ValueError, match="such as"):
        window_seconds(window)


def test_create_body_keeps_only_what_is_given():
    assert create_body({"name": "alice"}) == ("alice", {})
    assert create_body({"name": "bob", "models": ["qwen-*"], "rpm": 60, "tpm": 1000, "max_concurrent": 2,
                        "budget_tokens": 0, "budget_window": "month", "priority": "low"}) == (
        "bob", {"models": ["qwen-*"], "rpm": 60, "tpm": 1000, "max_concurrent": 2, "budget_tokens": 0,
                "budget_window": "month", "priority": "low"})
    assert update_body({"models": None, "rpm": None}) == {"models": None, "rpm": None}


@pytest.mark.parametrize(("body", "param", "words"), [
    ({}, "name", "required"),
    ({"name": 7}, "name", "expected a string"),
    ({"name": "a", "rpm": 0}, "rpm", "integer >= 1"),
    ({"name": "a", "rpm": -1}, "rpm", "integer >= 1"),
    ({"name": "a", "rpm": "60"}, "rpm", "integer >= 1"),
    ({"name": "a", "rpm": True}, "rpm", "integer >= 1"),
    ({"name": "a", "max_concurrent": 1.5}, "max_concurrent", "integer >= 1"),
    ({"name": "a", "budget_tokens": -5}, "budget_tokens", "integer >= 0"),
    ({"name": "a", "budget_window": "2w"}, "budget_window", "\"30d\" or \"month\""),
    ({"name": "a", "priority": "urgent"}, "priority", "high, normal, low"),
    ({"name": "a", "priority": None}, "priority", "high, normal, low"),
    ({"name": "a", "models": "qwen"}, "models", "a list of up to"),
    ({"name": "a", "models": [""]}, "models", "a list of up to"),
    ({"name": "a", "models": ["ok", 3]}, "models", "a list of up to"),
    ({"name": "a", "models": ["x"] * 257}, "models", "a list of up to"),
    ({"name": "a", "color": "red"}, "color", "not a key setting"),
])
def test_bad_create_bodies_name_the_field(body, param, words):
    with pytest.raises(ApiError) as err:
        create_body(body)
    assert (err.value.status, err.value.param) == (400, param)
    assert words in err.value.message and err.value.message.startswith(param)


@pytest.mark.parametrize(("body", "words"), [
    ([], "a JSON object"), ("x", "a JSON object"), ({}, "at least one setting"), ({"name": "b"}, "cannot be renamed"),
])
def test_bad_update_bodies(body, words):
    with pytest.raises(ApiError) as err:
        update_body(body)
    assert err.value.status == 400 and words in err.value.message
