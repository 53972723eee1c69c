"""Combiner-Axial, the row-major plan (paper Fig. 1F; TF `axial_rowmajor`, JAX `_SelfAttAxialRowmajor`).

The sequence is a grid of rows of m tokens; query (r, c). It sees its own row directly (causal:
j <= i) and every other row r' (causal: r' < r) through the summary of "row r' seen from column
c": local distribution = softmax of the actual query at (r', c) over row r' (computed once by full
attention inside every row), value = that row attention's output at (r', c). One joint softmax
over the m direct logits and the n region logits.

Deviations from the reference code:
- Abstraction key: the configs use `row_summary='proj'`, which needs learned weights and the layer
  input x, not expressible from q, k, v. This operator uses the parameter-free `wsum` option of
  the same code: key of (r', c) = sum_j p(j | r', c) k_j, the row attention applied to the keys.
- Bidirectional: TF does not mask the own row among the regions (counted twice); here r' != r.
- Lengths that are not a multiple of m are padded; padded keys are excluded. In bidirectional
  mode a query in column c can see the short last row, which may have no token in column c:
  that region's local query is then zero, i.e. a uniform distribution over the row's real tokens.
"""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import finish, joint_softmax, mask_value, to_blocks


def axial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None
) -> torch.Tensor:
    n = q.shape[-2]
    (qr, kr, vr), pad = to_blocks(q, k, v, block_size)  # (B, H, rows, m, D) each; pad (rows, m) or None
    rows, m = qr.shape[-3], qr.shape[-2]
    logits = qr @ kr.transpose(-2, -1)  # (B, H, rows, m, m)  doubles as the direct logits below
    if pad is not None:
        logits.masked_fill_(~pad[:, None, :], mask_value(logits))
    local = torch.softmax(logits, dim=-1)  # (B, H, rows, m, m)  p(j | row r', column c)
    row_value, row_key = ((local @ x).transpose(-3, -2) for x in (vr, kr))  # (B, H, m, rows, D) each: row attention on values, on keys
    del local
    region = qr.transpose(-3, -2) @ row_key.transpose(-2, -1)  # (B, H, m, rows, rows)  query row r vs row summaries r'
    parts = [(logits, _direct_drop(m, causal, q.device), False), (region, _region_drop(rows, causal, q.device), True)]
    (w_direct, w_region), total = joint_softmax(parts)
    out = (w_direct @ vr).add_((w_region @ row_value).transpose(-3, -2))  # (B, H, rows, m, D)
    return finish(out.div_(total.unsqueeze(-1)).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def _direct_drop(m: int, causal: bool, device) -> torch.Tensor | None:
    """Own row: causal drops keys right of the query, (m, m); padded keys are already masked."""
    return torch.ones(m, m, dtype=torch.bool, device=device).triu(1) if causal else None


def _region_drop(rows: int, causal: bool, device) -> torch.Tensor:
    """Query row r against row summaries r' (causal: r' >= r dropped; else r' == r): (rows, rows)."""
    r = torch.arange(rows, device=device)  # (rows,)
    return r[None, :] >= r[:, None] if causal else r[None, :] == r[:, None]  # (rows, rows)
