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
one product (row layout); terms 2 and 4 share the query's column (column layout).

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
    vertical = [_summaries(by_col, None if pad is None else pad.T, reverse) for reverse in directions]  # (B, H, m, rows, D) pairs
    horizontal = [_summaries(by_row, pad, reverse) for reverse in (False, True)]  # (B, H, rows, m, D) pairs
    row_keys, row_values = (torch.cat([by_row[i]] + [s[i - 1].transpose(-3, -2) for s in vertical], dim=-2) for i in (1, 2))
    col_keys, col_values = (torch.cat([by_col[i]] + [s[i - 1].transpose(-3, -2) for s in horizontal], dim=-2) for i in (1, 2))
    del vertical, horizontal
    parts = [
        (by_row[0] @ row_keys.transpose(-2, -1), _row_drop(valid, causal), False),  # (B, H, rows, m, m (1 + vertical))
        (by_col[0] @ col_keys.transpose(-2, -1), _col_drop(valid, causal), True),  # (B, H, m, rows, 3 rows)
    ]
    (w_row, w_col), total = joint_softmax(parts)
    out = (w_row @ row_values).add_((w_col @ col_values).transpose(-3, -2))  # (B, H, rows, m, D)
    return finish(out.div_(total.unsqueeze(-1)).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def _summaries(qkv: torch.Tensor, valid: torch.Tensor | None, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For every group (a row or a column; qkv stacked, layout (3, B, H, G, T, D)) and position t,
    the summary of the group's tokens strictly before t (after t when `reverse`): max-pooled key,
    and the softmax attention of the max-pooled query over those tokens. Returns k_hat, v_hat
    (B, H, G, T, D); positions with an empty region get finite filler (the caller masks them)."""
    pooled = prefix_max(qkv[:2], -2, reverse=reverse, valid=None if valid is None else valid[..., None])  # (2, B, H, G, T, D)
    t = torch.arange(qkv.shape[-2], device=qkv.device)  # (T,)
    outside = (t[None, :] <= t[:, None]) if reverse else (t[None, :] >= t[:, None])  # (T, T) key u not strictly before t
    if valid is not None:
        outside = outside | ~valid[:, None, :]  # (G, T, T)
    logits = (pooled[0] @ qkv[1].transpose(-2, -1)).masked_fill_(outside, mask_value(pooled))  # (B, H, G, T, T)
    return pooled[1], torch.softmax(logits, dim=-1) @ qkv[2]  # (B, H, G, T, D) each


def _present(valid: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """True where the region strictly before (after when `reverse`) a grid cell along `dim` holds a real token."""
    counts = valid.flip(dim).cumsum(dim).flip(dim) if reverse else valid.cumsum(dim)  # (rows, m) inclusive
    return (counts - valid.long()) > 0  # (rows, m)


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
    """Column-layout part, query (c, r): own-column keys then the left and the right summary of
    every row r' (taken at column c): (m, rows, 3 rows)."""
    r = torch.arange(valid.shape[0], device=valid.device)  # (rows,)
    own = (r[None, :] >= r[:, None]) if causal else (r[None, :] == r[:, None])  # (rows, rows) key row r' vs query row r
    direct = own | ~valid.T[:, None, :]  # (m, rows, rows)
    regions = [own | ~_present(valid, 1, reverse).T[:, None, :] for reverse in (False, True)]  # (m, rows, rows) each
    return torch.cat([direct] + regions, dim=-1)
