"""The columns of a torch batch's shared KV cache, once speculative decoding leaves holes in it.

The batch's cache is one tensor per layer, [rows, heads, columns, dim], left-padded, with a mask of the
columns each row attends to. A step that verifies drafts adds as many columns as the longest draft needs
(plus one) to every row; the cells of a row's rejected draft tokens, and of the padding after a shorter
draft, are then masked out instead of copied away, so a step never copies the cache. The row's next
positions go on from its real tokens (positions are passed explicitly), so attention over the masked cells
is as if they were never there. The holes cost memory and attention work until `compact` gathers each
row's real columns to the right of a narrower cache, which the batcher does only when the holes are a
large part of it: one copy now and then, not one per step.
"""

from __future__ import annotations

HOLES_SLACK = 64  # columns of holes tolerated before compacting, however short the cache


def real_columns(mask_row):
    """The indices of a row's real cells (mask 1), in order: its tokens, without padding or holes."""
    return mask_row.nonzero().squeeze(1)


def row_cache_layers(cache, mask, index: int, keep: int | None = None) -> list[tuple]:
    """Row `index`'s first `keep` (default: all) real cells, per layer as (keys, values) of one row."""
    cols = real_columns(mask[index])
    if keep is not None:
        cols = cols[:keep]
    return [(layer.keys[index:index + 1, :, cols].clone(), layer.values[index:index + 1, :, cols].clone())
            for layer in cache.layers]


def worth_compacting(mask) -> bool:
    """True when the columns no row needs, beyond left padding, are many: more than a quarter of the
    widest row's real cells, and more than HOLES_SLACK."""
    width, longest = mask.shape[1], int(mask.sum(dim=1).max())
    return width - longest > max(HOLES_SLACK, longest // 4)


def compact(torch, cache, mask):
    """The cache and mask with each row's real cells gathered to the right, left-padded to the longest row."""
    counts = mask.sum(dim=1)
    longest = int(counts.max())
    index = torch.zeros((mask.shape[0], longest), dtype=torch.long, device=mask.device)
    new_mask = torch.zeros((mask.shape[0], longest), dtype=mask.dtype, device=mask.device)
    for row in range(mask.shape[0]):
        cols = real_columns(mask[row])
        index[row, longest - len(cols):] = cols
        new_mask[row, longest - len(cols):] = 1
    for layer in cache.layers:
        rows, heads, _, dim = layer.keys.shape
        gather = index[:, None, :, None].expand(rows, heads, longest, dim)
        layer.keys, layer.values = layer.keys.gather(2, gather), layer.values.gather(2, gather)
    return new_mask


def can_verify(config) -> bool:
    """Whether the model's cache is plain full attention over every cell, which masking can take cells out
    of: not a sliding window (counted in cells, not positions) and not a recurrent state."""
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(kind == "full_attention" for kind in layer_types)
