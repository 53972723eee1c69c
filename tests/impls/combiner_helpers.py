"""What the Combiner tests share."""

from __future__ import annotations

import torch


def naive_prefix_max(x, dim, reverse, valid):
    """Position by position: the max over the valid entries strictly before t (after, reversed), else 0."""
    x = x.masked_fill(~valid, float("-inf")) if valid is not None else x
    out = torch.zeros_like(x)
    size = x.shape[dim]
    for t in range(size):
        others = x.narrow(dim, t + 1, size - t - 1) if reverse else x.narrow(dim, 0, t)
        if others.shape[dim]:
            best = others.amax(dim)
            out.select(dim, t).copy_(best.masked_fill(best == float("-inf"), 0.0))
    return out
