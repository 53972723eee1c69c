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
    row_drop, col_drop = _row_drop(valid, causal), _col_drop(valid, causal)  # (rows, m, m (1 + directions)), (m, rows, 3 rows)
    out = []
    for a, b in row_blocks(rows, CAUSAL_ROW_BLOCKS if causal else 1):
        reach = 3 * (b if causal else rows)  # column keys of the key rows a causal block can see
        parts = [
            (by_row[0, :, :, a:b] @ row_kv[0, :, :, a:b].transpose(-2, -1), row_drop[a:b], False),  # (B, H, nb, m, m (1 + directions))
            (by_col[0, ..., a:b, :] @ col_kv[0, ..., :reach, :].transpose(-2, -1), col_drop[:, a:b, :reach], True),  # (B, H, m, nb, reach)
        ]
        (w_row, w_col), total = joint_softmax(parts)
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
    far end, which skips most of the masked triangle (3/4 of the T x T logits are formed)."""
    pooled = prefix_max(qkv[:2], -2, reverse=reverse, valid=None if valid is None else valid[..., None])  # (2, B, H, G, T, D)
    size = qkv.shape[-2]
    t = torch.arange(size, device=qkv.device)  # (T,)
    outside = (t[None, :] <= t[:, None]) if reverse else (t[None, :] >= t[:, None])  # (T, T) key u not strictly before t
    if valid is not None:
        outside = outside | ~valid[:, None, :]  # (G, T, T)
    out[0] = pooled[1]
    for a, b in row_blocks(size, SUMMARY_BLOCKS):
        lo, hi = (a, size) if reverse else (0, b)  # the keys positions [a, b) can reach
        logits = pooled[0, ..., a:b, :] @ qkv[1, ..., lo:hi, :].transpose(-2, -1)  # (B, H, G, b - a, hi - lo)
        logits.masked_fill_(outside[..., a:b, lo:hi], mask_value(pooled))
        out[1, ..., a:b, :] = torch.softmax(logits, dim=-1) @ qkv[2, ..., lo:hi, :]  # (B, H, G, b - a, D)


def _row_drop(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Row-layout part, query (r, c): own-row keys then, per scan direction, one vertical summary
    per column c' (taken at row r): (rows, m, m (1 + directions))."""
    rows, m = valid.shape
    eye = torch.eye(m, dtype=torch.bool, device=valid.device)  # (m, m)
    direct = (~valid[:, None, :]).expand(rows, m, m)  # (rows, m, m) padded keys
    if causal:
        direct = direct | torch.ones_like(eye).triu(1)  # key c' > c
    regions = [eye | ~_present(valid, 0, reverse)[:, None, :] for reverse in ((False,) if causal else (False, True))]  # (rows, m, m) each
    return torch.cat([direct] + regions, dim=-1)


def _col_drop(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Column-layout part, query (c, r), keys interleaved by key row r': own-column key, left and
    right summary of row r' (taken at column c): (m, rows, 3 rows), key 3 r' + term."""
    r = torch.arange(valid.shape[0], device=valid.device)  # (rows,)
    own = (r[None, :] >= r[:, None]) if causal else (r[None, :] == r[:, None])  # (rows, rows) key row r' vs query row r
    terms = [~valid.T] + [~_present(valid, 1, reverse).T for reverse in (False, True)]  # (m, rows) each, indexed by key row r'
    return (own[None, :, :, None] | torch.stack(terms, dim=-1)[:, None, :, :]).flatten(-2)  # (m, rows, 3 rows)


def _present(valid: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """True where the region strictly before (after when `reverse`) a grid cell along `dim` holds a real token."""
    counts = valid.flip(dim).cumsum(dim).flip(dim) if reverse else valid.cumsum(dim)  # (rows, m) inclusive
    return (counts - valid.long()) > 0  # (rows, m)
