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

from attnprof.impls.combiner.common import finish, joint_softmax, mask_value, merge_by_normalisers, to_blocks
from attnprof.impls.combiner.triton_softmax import MAX_HEAD_DIM, Band, fused_attend


def axial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None, fused: bool = False
) -> torch.Tensor:
    """fused: the row attention and the direct and region parts each through the fused softmax kernel, the parts
    merged by their log-normalisers (backend="triton", see _fused_parts), instead of eager softmaxes."""
    n = q.shape[-2]
    (qr, kr, vr), pad = to_blocks(q, k, v, block_size)  # (B, H, rows, m, D) each; pad (rows, m) or None
    rows, m = qr.shape[-3], qr.shape[-2]
    if fused:
        return finish(_fused_parts(qr, kr, vr, n, causal, q.dtype).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)
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


def _fused_parts(qr, kr, vr, n: int, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """The row attention (on values and on keys) and the direct and region parts, each through the fused softmax
    kernel (triton_softmax), the parts merged by their log-normalisers: no weights are written, and the kernel drops
    the causal and region masks' keys (Band) where the joint softmax filled them in the logits. Where a Band is all the
    masking, the kernel forms the logits from queries and keys too (softmax_values_qk): the region part always; the
    row attention and the direct part when no gradient is wanted and the last row holds no padding. Else they share
    one logits tensor, its padded keys filled: each backward of the in-kernel form would form the shared logits again
    (counted at N = 65536, bf16, causal: forward 8.9 GB in-kernel, 14.8 shared; forward + backward 89.0 in-kernel, 86.8
    shared, before the region part's copies were counted and then removed).
    One part at a time, as Mixture's merged plan. qr, kr, vr (B, H, rows, m, D) -> (B, H, rows, m, D); dtype: the
    inputs'."""
    rows, m = qr.shape[-3], qr.shape[-2]
    tail = n - (rows - 1) * m  # real tokens in the last row, 1 .. m
    differentiated = torch.is_grad_enabled() and any(x.requires_grad for x in (qr, kr, vr))
    if tail == m and not differentiated:
        attend, scores = fused_attend(dtype, from_queries=True), (qr, kr)  # the logits formed in each kernel
    else:
        attend, logits = fused_attend(dtype), qr @ kr.transpose(-2, -1)  # (B, H, rows, m, m)  the row attention's and direct
        with torch.no_grad():  # a dropped logit weighs 0 and gets no gradient: autograd need not know of the fill
            logits[..., -1, :, tail:].fill_(float("-inf"))  # the last row's padded keys (no other row holds padding)
        scores = (logits,)
    # The row attention applied to values and to keys. One launch over both, concatenated, where the accumulator fits:
    # the same bytes forward as two (the copy against a second read of the logits), and one backward, not two
    # (counted at N = 65536, bf16, causal: forward + backward 86.3 against 100.3 GB; eager 88.7).
    if 2 * vr.shape[-1] <= MAX_HEAD_DIM:
        both = attend(*scores, torch.cat([vr, kr], dim=-1))[0]  # (B, H, rows, m, 2 D)
        row_value, row_key = both.transpose(-3, -2).chunk(2, dim=-1)  # (B, H, m, rows, D) each
    else:
        row_value, row_key = (attend(*scores, x)[0].transpose(-3, -2) for x in (vr, kr))  # (B, H, m, rows, D) each
    direct_out, direct_lse = attend(*scores, vr, band=Band(1, 1, m) if causal else None)  # (B, H, rows, m, D), (..., 1)
    del scores
    # query row r drops the summaries of rows r .. rows - 1 (causal) or of its own row alone; the first row keeps none
    # when causal (and every row of a one-row grid): lse -inf, weight 0
    band = Band(0, 1, rows) if causal else Band(0, 1, 1, 1)
    # query row r against the row summaries r': (B, H, m, rows, D), (..., 1), then to (B, H, rows, m, D), (..., 1)
    region = fused_attend(dtype, from_queries=True)(qr.transpose(-3, -2), row_key, row_value, band=band)
    region_out, region_lse = (x.transpose(-3, -2) for x in region)
    return merge_by_normalisers(direct_out, direct_lse, region_out, region_lse)
