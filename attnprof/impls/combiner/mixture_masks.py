"""The masks of Combiner-Mixture's two logit parts (see mixture.py for the terms and layouts)."""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import mask_value, token_valid

NEG_INF = float("-inf")


class MixtureMasks:
    """The masks of the two logit parts of the query rows [a, b), applied in place, and only where they
    drop something: a triangle or a diagonal, two empty-region slivers, and the padding of the
    last row. (A dense mask over every logit was two of the ~10 passes over them: counted on meta at
    N = 65536, H = 16, bf16, causal, 13 GB of the ~100 GB forward.) Padding sits at the end, so only the
    last row holds it: every other row is whole, and its empty regions are those of the grid's edges.

    Row part, query (r, c), keys: own row c' (padded keys dropped; causal: c' > c dropped), then per scan
    direction the vertical summary of column c' (dropped: c' == c, and regions holding no real token).
    Column part, query (c, r), keys 3 r' + term: own-column key (r', c), left and right summary of row r'
    (dropped: r' >= r causal, r' == r bidirectional; regions and keys without a real token).

    The fills run outside autograd. A dropped logit is -inf, so its weight is 0 and so is the gradient the
    softmax sends it (a row left with finite filler only, below, weighs 0 as a whole): the gradients are
    exact without autograd knowing of the fills, and it does not clone the whole logits tensor in the
    backward for each fill of a view (counted on meta at N = 65536: 48 GB of
    505 causal, 65 of 523 bidirectional, forward and backward)."""

    def __init__(self, n: int, m: int, rows: int, causal: bool):
        self.m, self.rows, self.causal = m, rows, causal
        self.directions = (False,) if causal else (False, True)
        valid = token_valid(n, rows * m, "cpu").view(rows, m)  # (rows, m), on the host: no device sync to plan the fills
        self.padded = rows * m > n
        self.empty_regions = [~_present(valid, 0, reverse) for reverse in self.directions]  # (rows, m) each, by (r, c')
        self.last_row_terms = torch.stack([~valid[-1], ~_present(valid, 1, False)[-1], ~_present(valid, 1, True)[-1]], dim=-1)  # (m, 3)
        self.last_row_keys = valid[-1]  # (m,)

    def mask_row_part(self, logits: torch.Tensor, *, a: int, b: int) -> None:
        """logits (B, H, b - a, m, m (1 + directions))."""
        m, device = self.m, logits.device
        direct = logits[..., :m]  # (B, H, nb, m, m)
        if self.causal:
            direct.masked_fill_(torch.ones(m, m, dtype=torch.bool, device=device).triu(1), NEG_INF)
        if self.padded and b == self.rows:
            direct[..., -1, :, :].masked_fill_(~self.last_row_keys.to(device), NEG_INF)
        for i, empty in enumerate(self.empty_regions):
            regions = logits[..., m * (i + 1) : m * (i + 2)]  # (B, H, nb, m, m)
            regions.diagonal(dim1=-2, dim2=-1).fill_(NEG_INF)  # the own column is direct, not a region
            for r in empty[a:b].any(dim=1).nonzero().flatten().tolist():  # rows of the grid's edge (one or two)
                regions[..., r, :, :].masked_fill_(empty[a + r].to(device), NEG_INF)

    def mask_column_part(self, logits: torch.Tensor, *, a: int, b: int) -> None:
        """logits (B, H, m, b - a, reach), reach = 3 x (key rows formed)."""
        m, device = self.m, logits.device
        reach = logits.shape[-1] // 3
        if self.causal:  # key rows before a are all earlier than the block's queries; within [a, b): r' >= r
            own = logits[..., 3 * a : 3 * b].unflatten(-1, (b - a, 3))  # (B, H, m, nb, nb, 3)
            r = torch.arange(b - a, device=device)
            own.masked_fill_((r[None, :] >= r[:, None])[..., None], NEG_INF)
        else:
            logits.unflatten(-1, (reach, 3)).diagonal(dim1=-3, dim2=-2).fill_(NEG_INF)  # (B, H, m, 3, rows): r' == r
        logits[..., 0, :, 1::3].fill_(NEG_INF)  # column 0: nothing left of it in any row
        logits[..., m - 1, :, 2::3].fill_(NEG_INF)  # column m - 1: nothing right of it
        if self.padded and reach == self.rows:  # the last key row, part padding: its own key and right summary
            last = logits[..., 3 * (reach - 1) :]  # (B, H, m, nb, 3)
            last.masked_fill_(self.last_row_terms.to(device)[:, None, :], NEG_INF)
        # Query rows with no column key at all: causal row 0, and every row of a one-row grid. Finite filler
        # gives them a defined softmax whose log-normaliser (about the dtype's minimum) weighs 0 in the merge.
        if self.rows == 1:
            logits.fill_(mask_value(logits))
        elif self.causal and a == 0:
            logits[..., 0, :].fill_(mask_value(logits))


def _present(valid: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """True where the region strictly before (after when `reverse`) a grid cell along `dim` holds a real token."""
    counts = valid.flip(dim).cumsum(dim).flip(dim) if reverse else valid.cumsum(dim)  # (rows, m) inclusive
    return (counts - valid.long()) > 0  # (rows, m)
