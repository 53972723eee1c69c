"""The masks of Combiner-Mixture's two logit parts (see mixture.py for the terms and layouts)."""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import mask_value
from attnprof.impls.combiner.triton_softmax import Band

NEG_INF = float("-inf")
# By plan (mixture.plan). Position blocks of the running-summary attention, each reaching only its side of the block's
# far end (2: 3/4 of the logits formed); the CPU's fused kernel takes each group whole (see mixture_flash._summaries).
SUMMARY_BLOCKS = {"merged": 2, "flash": 1}
# Query row blocks in causal mode, each forming column logits only against the key rows before its end (4: (1 + 2 + 3
# + 4) / 16 of them). The CPU's kernel: 2, its causal operator at N = 8192 taking 241.8 ms against 248.6 with 4
# (medians of six alternating runs; 1 block 247.5, 3 blocks 248.7).
CAUSAL_ROW_BLOCKS = {"merged": 4, "flash": 2}


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
        self.tail = n - (rows - 1) * m  # real tokens in the last row, 1 .. m
        self.padded = self.tail < m
        # Vertical regions holding no real token, per scan direction, as (grid row, first such column c'). Above
        # (forward): nothing is above row 0. Below (backward): nothing is below the last row, and below the row
        # before it only the last row's tokens, padding from column `tail` on. Plain ints: planning the fills
        # needs no host tensor, so no device sync and, under torch.compile, no graph break of its own.
        above = [(0, 0)]
        below = [(rows - 1, 0)] + ([(rows - 2, self.tail)] if self.padded and rows >= 2 else [])
        self.empty_regions = [above] if causal else [above, below]

    def mask_row_part(self, logits: torch.Tensor, *, a: int, b: int, band: bool = False) -> Band | None:
        """logits (B, H, b - a, m, m (1 + directions)). band: the causal triangle is left to the fused kernel (returned)."""
        m = self.m
        direct = logits[..., :m]  # (B, H, nb, m, m)
        triangle = Band(1, 1, m) if self.causal and band else None  # query column c drops the keys c' in (c, m)
        if self.causal and not band:
            direct.masked_fill_(torch.ones(m, m, dtype=torch.bool, device=logits.device).triu(1), NEG_INF)
        if self.padded and b == self.rows:
            direct[..., -1, :, self.tail :].fill_(NEG_INF)  # the last row's padded keys
        for i, empty in enumerate(self.empty_regions):
            regions = logits[..., m * (i + 1) : m * (i + 2)]  # (B, H, nb, m, m)
            regions.diagonal(dim1=-2, dim2=-1).fill_(NEG_INF)  # the own column is direct, not a region
            for row, first in empty:
                if a <= row < b:
                    regions[..., row - a, :, first:].fill_(NEG_INF)
        return triangle

    def mask_column_part(self, logits: torch.Tensor, *, a: int, b: int, band: bool = False) -> Band | None:
        """logits (B, H, m, b - a, reach), reach = 3 x (key rows formed). band: the causal triangle is left to the
        fused kernel (returned)."""
        m, device = self.m, logits.device
        reach = logits.shape[-1] // 3
        triangle = Band(3 * a, 3, 3 * b) if self.causal and band else None  # query row a + i drops key rows a + i .. b - 1
        if self.causal and not band:  # key rows before a are all earlier than the block's queries; within [a, b): r' >= r
            own = logits[..., 3 * a : 3 * b].unflatten(-1, (b - a, 3))  # (B, H, m, nb, nb, 3)
            r = torch.arange(b - a, device=device)
            own.masked_fill_((r[None, :] >= r[:, None])[..., None], NEG_INF)
        elif not self.causal:
            logits.unflatten(-1, (reach, 3)).diagonal(dim1=-3, dim2=-2).fill_(NEG_INF)  # (B, H, m, 3, rows): r' == r
        logits[..., 0, :, 1::3].fill_(NEG_INF)  # column 0: nothing left of it in any row
        logits[..., m - 1, :, 2::3].fill_(NEG_INF)  # column m - 1: nothing right of it
        if self.padded and reach == self.rows:  # the last key row, part padding: its own key and right summary
            last = logits[..., 3 * (reach - 1) :]  # (B, H, m, nb, 3)
            last[..., self.tail :, :, 0].fill_(NEG_INF)  # key (last row, c) is padding
            last[..., self.tail - 1 :, :, 2].fill_(NEG_INF)  # nothing real right of c in the last row
        # Query rows with no column key at all: causal row 0, and every row of a one-row grid. Finite filler
        # gives them a defined softmax whose log-normaliser (about the dtype's minimum) weighs 0 in the merge.
        if self.rows == 1:
            logits.fill_(mask_value(logits))
        elif self.causal and a == 0:
            logits[..., 0, :].fill_(mask_value(logits))
        return triangle
