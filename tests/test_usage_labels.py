"""The per-key series stay bounded (issue 24, item 7): the first `[metrics] max_key_labels` key names keep a
label of their own, later ones share `_other`; the setting is read from cortex.toml and checked."""

from __future__ import annotations

import pytest

from cortex_gateway.config import load_config
from cortex_gateway.metrics import OTHER_KEYS, GatewayMetrics, KeyLabels
from neuron.shared.config_fields import ConfigError


def test_names_beyond_the_bound_share_one_label():
    labels = KeyLabels(limit=2)
    assert [labels(n) for n in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER_KEYS, "a", OTHER_KEYS, "b"]


def test_the_counters_use_the_bounded_labels():
    metrics = GatewayMetrics()
    metrics.key_labels.limit = 1
    metrics.observe_key_tokens("alice", 3, 4)
    metrics.observe_key_tokens("bob", 5, 6)
    metrics.observe_key_refusal("carol", "budget")
    text = metrics.render().decode()
    assert 'cortex_key_tokens_total{key="alice",kind="completion"} 4.0' in text
    assert 'cortex_key_tokens_total{key="_other",kind="prompt"} 5.0' in text
    assert 'cortex_key_refusals_total{key="_other",reason="budget"} 1.0' in text
    assert "bob" not in text and "carol" not in text


def test_max_key_labels_is_read_and_checked(tmp_path):
    path = tmp_path / "cortex.toml"
    path.write_text("[metrics]\nmax_key_labels = 7\n")
    assert load_config(path).max_key_labels == 7
    path.write_text("")
    assert load_config(path).max_key_labels == 100
    path.write_text("[metrics]\nmax_key_labels = -1\n")
    with pytest.raises(ConfigError, match="max_key_labels"):
        load_config(path)
