"""Combiner-Mixture (JAX `_AxialMixtureAtt`, TF `axial_mixture_unidir` / `axial_mixture_bidir`).

The sequence is a grid of rows of m tokens; query (r, c). One joint softmax over the terms of
axial-vertical and axial-horizontal together, as the reference code does (not the paper's average
of two separate plans):
1. direct row: keys (r, c'), causal c' <= c (m terms);
2. direct column: keys (r', c), causal r' < r, bidirectional r' != r (n terms);
3. vertical regions: for every other column c', its tokens above row r (bidirectional: and, as a
   separate region, below), summarised by the running max of queries and keys (m terms each);
4. horizontal regions: for every other row r' (causal: r' < r), its tokens left of column c and
   its tokens right of column c, summarised by running maxes along the row (n terms each).
Tokens off the own row and column are reachable through a vertical and a horizontal region: that
is the "mixture". Summary value = softmax attention of the region's max-pooled query over it.

Layout: terms 1 and 3 share the query's row, so their keys are concatenated per row and taken in
one product (row layout (B, H, rows, m, D)); terms 2 and 4 share the query's column (column layout
(B, H, m, rows, D)), and their keys are interleaved by key row, (r', direct), (r', left), (r', right),
so that the keys of rows [0, b) are a prefix. Queries are processed in blocks of grid rows; in
causal mode a block of rows [a, b) forms column logits only against that prefix, which skips most
of the masked upper triangle of the column terms (CAUSAL_ROW_BLOCKS = 4: 5/8 of them are formed).

Deviations from the reference code:
- TF's `approx_cummax` is a cumsum; this uses a true running max (as JAX `lax.cummax` does).
- Bidirectional: TF counts the query itself twice (row and column, a TODO in its code), includes
  the own column/row among the regions, and gives empty regions (first/last row or column) a zero
  key with non-zero weight. Here the own column excludes the query, the own row and column are
  never regions, and empty regions are masked - the mirror image of the causal form.
- Lengths that are not a multiple of m are padded; padded tokens are excluded from every pool,
  local softmax and direct logit, and regions holding only padding are masked.
"""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import finish, joint_softmax, mask_value, prepare, resolve_block, token_valid
from attnprof.impls.combiner.scan import prefix_max

SUMMARY_BLOCKS = 2  # position blocks of the running-summary attention
CAUSAL_ROW_BLOCKS = 4  # query row blocks in causal mode: column products over (1 + 2 + 3 + 4) / 16 of the key rows
NEG_INF = float("-inf")


def mixture_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None
) -> torch.Tensor:
    n = q.shape[-2]
    m = resolve_block(block_size, n)
    rows = -(-n // m)
    valid = token_valid(n, rows * m, q.device).view(rows, m)  # (rows, m)
    pad = valid if rows * m > n else None
    by_row = torch.stack(prepare(q, k, v, rows * m)).unflatten(-2, (rows, m))  # (3, B, H, rows, m, D)  q, k, v stacked
    by_col = by_row.transpose(-3, -2).contiguous()  # (3, B, H, m, rows, D)
    directions = (False,) if causal else (False, True)  # scan forward (above / left) and, bidirectional, backward
    # Keys and values of the two layouts, the summaries written straight into their slots (a stack and a cat per
    # summary, then one of all of them, were 23% of the CPU time at N = 8192: ~770 MB copied per call).
    width = by_row.shape[-1]
    row_kv = by_row.new_empty((2, *by_row.shape[1:-2], m * (1 + len(directions)), width))  # (2, B, H, rows, m (1 + directions), D)
    row_kv[..., :m, :] = by_row[1:]
    for i, reverse in enumerate(directions):  # vertical summaries, computed in the column layout
        _summaries(by_col, None if pad is None else pad.T, reverse, out=row_kv[..., m * (i + 1) : m * (i + 2), :].transpose(-3, -2))
    col_kv = by_col.new_empty((2, *by_col.shape[1:-1], 3, width))  # (2, B, H, m, rows, 3, D): key 3 r' + term
    col_kv[..., 0, :] = by_col[1:]
    for i, reverse in enumerate((False, True)):  # horizontal summaries, computed in the row layout
        _summaries(by_row, pad, reverse, out=col_kv[..., i + 1, :].transpose(-3, -2))
    col_kv = col_kv.flatten(-3, -2)  # (2, B, H, m, 3 rows, D)
    grid = _Grid(n, m, rows, causal)
    out = []
    for a, b in row_blocks(rows, CAUSAL_ROW_BLOCKS if causal else 1):
        reach = 3 * (b if causal else rows)  # column keys of the key rows a causal block can see
        row_logits = by_row[0, :, :, a:b] @ row_kv[0, :, :, a:b].transpose(-2, -1)  # (B, H, nb, m, m (1 + directions))
        col_logits = by_col[0, ..., a:b, :] @ col_kv[0, ..., :reach, :].transpose(-2, -1)  # (B, H, m, nb, reach)
        with torch.no_grad():  # see _Grid: the dropped logits get no gradient, and autograd need not copy for the fills
            grid.mask_row_part(row_logits, a, b)
            grid.mask_column_part(col_logits, a, b)
        (w_row, w_col), total = joint_softmax([(row_logits, None, False), (col_logits, None, True)])
        block = (w_row @ row_kv[1, :, :, a:b]).add_((w_col @ col_kv[1, ..., :reach, :]).transpose(-3, -2))  # (B, H, nb, m, D)
        out.append(block.div_(total.unsqueeze(-1)))
    return finish(torch.cat(out, dim=-3).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def row_blocks(rows: int, count: int) -> list[tuple[int, int]]:
    """[a, b) ranges of grid rows, `count` of them as equal as possible (fewer when rows < count)."""
    edges = [round(i * rows / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _summaries(qkv: torch.Tensor, valid: torch.Tensor | None, reverse: bool, out: torch.Tensor) -> None:
    """For every group (a row or a column; qkv stacked, layout (3, B, H, G, T, D)) and position t,
    the summary of the group's tokens strictly before t (after t when `reverse`): max-pooled key,
    and the softmax attention of the max-pooled query over those tokens. Writes k_hat and v_hat
    into `out` (2, B, H, G, T, D), any strides; positions with an empty region get finite filler (masked later).
    Positions go in SUMMARY_BLOCKS blocks, each against only the keys on its side of the block's
    far end, which skips most of the masked triangle (3/4 of the T x T logits are formed). Without
    padding only the keys inside the block need a mask (a triangle); keys beyond it are all seen."""
    pooled = prefix_max(qkv[:2], -2, reverse=reverse, valid=None if valid is None else valid[..., None])  # (2, B, H, G, T, D)
    size = qkv.shape[-2]
    out[0] = pooled[1]
    for a, b in row_blocks(size, SUMMARY_BLOCKS):
        lo, hi = (a, size) if reverse else (0, b)  # the keys positions [a, b) can reach
        logits = pooled[0, ..., a:b, :] @ qkv[1, ..., lo:hi, :].transpose(-2, -1)  # (B, H, G, b - a, hi - lo)
        t = torch.arange(size, device=qkv.device)  # (T,)
        with torch.no_grad():  # as in the joint softmax (see _Grid)
            if valid is None:  # keys [a, b): u <= t (reverse) or u >= t is not strictly before / after the position
                span = t[a:b]
                drop = (span[None, :] <= span[:, None]) if reverse else (span[None, :] >= span[:, None])  # (b - a, b - a)
                logits[..., a - lo : b - lo].masked_fill_(drop, mask_value(pooled))  # (B, H, G, b - a, b - a)
            else:
                outside = (t[None, lo:hi] <= t[a:b, None]) if reverse else (t[None, lo:hi] >= t[a:b, None])  # (b - a, hi - lo)
                logits.masked_fill_(outside | ~valid[:, None, lo:hi], mask_value(pooled))  # (G, b - a, hi - lo)
        out[1, ..., a:b, :] = torch.softmax(logits, dim=-1) @ qkv[2, ..., lo:hi, :]  # (B, H, G, b - a, D)


class _Grid:
    """The masks of the joint softmax, applied in place to the parts of the query rows [a, b), and only
    where they drop something: a triangle or a diagonal, two empty-region slivers, and the padding of the
    last row. (A dense mask over every logit was two of the ~10 passes over them: counted on meta at
    N = 65536, H = 16, bf16, causal, 13 GB of the ~100 GB forward.) Padding sits at the end, so only the
    last row holds it: every other row is whole, and its empty regions are those of the grid's edges.

    Row part, query (r, c), keys: own row c' (padded keys dropped; causal: c' > c dropped), then per scan
    direction the vertical summary of column c' (dropped: c' == c, and regions holding no real token).
    Column part, query (c, r), keys 3 r' + term: own-column key (r', c), left and right summary of row r'
    (dropped: r' >= r causal, r' == r bidirectional; regions and keys without a real token).

    The fills run outside autograd. A dropped logit is -inf, so its weight is 0 and so is the gradient the
    softmax sends it: the gradients are exact without autograd knowing of the fills, and it does not clone
    the whole logits tensor in the backward for each fill of a view (counted on meta at N = 65536: 48 GB of
    505 causal, 65 of 523 bidirectional, forward and backward)."""

    def __init__(self, n: int, m: int, rows: int, causal: bool):
        self.m, self.rows, self.causal = m, rows, causal
        self.directions = (False,) if causal else (False, True)
        valid = token_valid(n, rows * m, "cpu").view(rows, m)  # (rows, m), on the host: no device sync to plan the fills
        self.padded = rows * m > n
        self.empty_regions = [~_present(valid, 0, reverse) for reverse in self.directions]  # (rows, m) each, by (r, c')
        self.last_row_terms = torch.stack([~valid[-1], ~_present(valid, 1, False)[-1], ~_present(valid, 1, True)[-1]], dim=-1)  # (m, 3)
        self.last_row_keys = valid[-1]  # (m,)

    def mask_row_part(self, logits: torch.Tensor, a: int, b: int) -> None:
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

    def mask_column_part(self, logits: torch.Tensor, a: int, b: int) -> None:
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


def _present(valid: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """True where the region strictly before (after when `reverse`) a grid cell along `dim` holds a real token."""
    counts = valid.flip(dim).cumsum(dim).flip(dim) if reverse else valid.cumsum(dim)  # (rows, m) inclusive
    return (counts - valid.long()) > 0  # (rows, m)
