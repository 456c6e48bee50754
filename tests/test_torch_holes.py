"""The holes speculative decoding leaves in a torch batch's cache (`torch_holes`), on real tensors and a
real transformers DynamicCache: compacting keeps each row's real cells, in order, right-aligned; a row
taken out of the batch is its real cells only; which models' caches can be masked at all."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from neuron.engine.backends import torch_holes  # noqa: E402


def batch(mask_rows: list[list[int]], layers: int = 2):
    """A cache whose every cell holds its own column index (times the layer), and its mask."""
    mask = torch.tensor(mask_rows)
    rows, width = mask.shape
    cells = torch.arange(width, dtype=torch.float32)[None, None, :, None].expand(rows, 2, width, 3).clone()
    cache = transformers.DynamicCache(ddp_cache_data=[(cells * (i + 1), -cells * (i + 1)) for i in range(layers)])
    return cache, mask


def test_compacting_gathers_each_rows_real_cells_in_order_to_the_right():
    cache, mask = batch([[0, 1, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 0, 0, 0, 0]])
    new_mask = torch_holes.compact(torch, cache, mask)
    assert new_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]
    keys = cache.layers[1].keys
    assert keys.shape == (3, 2, 6, 3)
    assert keys[0, 0, 2:, 0].tolist() == [2 * c for c in (1, 2, 5, 7)]
    assert keys[1, 1, :, 2].tolist() == [2 * c for c in (0, 1, 2, 3, 6, 7)]
    assert keys[2, 0, 5, 0].item() == 6 and cache.layers[1].values[2, 0, 5, 0].item() == -6


def test_a_row_is_taken_out_as_its_real_cells_or_a_prefix_of_them():
    cache, mask = batch([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    layers = torch_holes.row_cache_layers(cache, mask, 0)
    assert [k[0, 0, :, 0].tolist() for k, _ in layers] == [[1, 3, 4], [2, 6, 8]]
    assert torch_holes.row_cache_layers(cache, mask, 0, keep=2)[0][1][0, 1, :, 0].tolist() == [-1, -3]


def test_compacting_is_worth_it_only_when_holes_are_many():
    assert not torch_holes.worth_compacting(torch.ones((2, 100)))
    sparse = torch.zeros((2, 400))
    sparse[:, ::2] = 1  # 200 real cells each, 200 columns of holes
    assert torch_holes.worth_compacting(sparse)
    few = torch.ones((1, 100))
    few[0, :60] = 0  # 60 columns no row needs: under HOLES_SLACK
    assert not torch_holes.worth_compacting(few)


@pytest.mark.parametrize(("config", "verifies"), [
    (transformers.LlamaConfig(), True),
    (transformers.MistralConfig(sliding_window=4096), False),
    (transformers.Qwen2Config(use_sliding_window=False, sliding_window=4096), True),
    (transformers.Qwen2Config(use_sliding_window=True, sliding_window=4096, max_window_layers=0), False),
])
def test_only_full_attention_caches_take_drafts(config, verifies):
    assert torch_holes.can_verify(config) is verifies
