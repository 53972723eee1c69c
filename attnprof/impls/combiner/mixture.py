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
of the masked upper triangle of the column terms (CAUSAL_ROW_BLOCKS: 4 off the CPU, 5/8 of them formed).

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

import functools

import torch

from attnprof.impls.base import planning_device_type
from attnprof.impls.combiner.common import finish, mask_value, merge_by_normalisers, prepare, resolve_block, row_blocks, token_valid
from attnprof.impls.combiner.mixture_flash import flash_mixture
from attnprof.impls.combiner.mixture_masks import CAUSAL_ROW_BLOCKS, SUMMARY_BLOCKS, MixtureMasks
from attnprof.impls.combiner.scan import prefix_max
from attnprof.impls.combiner.triton_softmax import Band, fused_attend


def mixture_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None, fused: bool = False
) -> torch.Tensor:
    """fused: each softmax (the logit parts', the summaries') and its product with the values in one Triton kernel
    (backend="triton", triton_softmax.py) instead of eager ops; implies the merged plan, on any device."""
    n = q.shape[-2]
    m = resolve_block(block_size, n)
    if not fused and plan(q.device) == "flash":
        return flash_mixture(q, k, v, causal=causal, m=m)
    rows = -(-n // m)
    valid = token_valid(n, rows * m, q.device).view(rows, m)  # (rows, m)
    pad = valid if rows * m > n else None
    by_row = torch.stack(prepare(q, k, v, rows * m)).unflatten(-2, (rows, m))  # (3, B, H, rows, m, D)  q, k, v stacked
    by_col = by_row.transpose(-3, -2).contiguous()  # (3, B, H, m, rows, D)
    directions = (False,) if causal else (False, True)  # scan forward (above / left) and, bidirectional, backward
    # the summaries' softmax and values, fused (backend=triton): from their logits, or from queries and keys
    attend = (fused_attend(q.dtype), fused_attend(q.dtype, from_queries=True)) if fused else None
    # Keys and values of the two layouts, the summaries written straight into their slots (a stack and a cat per
    # summary, then one of all of them, were 23% of the CPU time at N = 8192: ~770 MB copied per call).
    width = by_row.shape[-1]
    row_kv = by_row.new_empty((2, *by_row.shape[1:-2], m * (1 + len(directions)), width))  # (2, B, H, rows, m (1 + directions), D)
    row_kv[..., :m, :] = by_row[1:]
    for i, reverse in enumerate(directions):  # vertical summaries, computed in the column layout
        _summaries(by_col, None if pad is None else pad.T, reverse, row_kv[..., m * (i + 1) : m * (i + 2), :].transpose(-3, -2), attend)
    col_kv = by_col.new_empty((2, *by_col.shape[1:-1], 3, width))  # (2, B, H, m, rows, 3, D): key 3 r' + term
    col_kv[..., 0, :] = by_col[1:]
    for i, reverse in enumerate((False, True)):  # horizontal summaries, computed in the row layout
        _summaries(by_row, pad, reverse, col_kv[..., i + 1, :].transpose(-3, -2), attend)
    col_kv = col_kv.flatten(-3, -2)  # (2, B, H, m, 3 rows, D)
    masks = MixtureMasks(n, m, rows, causal)
    if fused:
        block = functools.partial(_merged_block, part=functools.partial(_part_softmax, attend=attend[0]))
    else:
        block = _merged_block
    out = []
    for a, b in row_blocks(rows, CAUSAL_ROW_BLOCKS["merged"] if causal else 1):
        reach = 3 * (b if causal else rows)  # column keys of the key rows a causal block can see
        # queries (B, H, nb, m, D) and (B, H, m, nb, D); with fused, the kernel drops the causal triangles (the masks return them)
        row_part = (by_row[0, :, :, a:b], row_kv[:, :, :, a:b], functools.partial(masks.mask_row_part, a=a, b=b, band=fused))
        col_part = (by_col[0, ..., a:b, :], col_kv[..., :reach, :], functools.partial(masks.mask_column_part, a=a, b=b, band=fused))
        out.append(block(row_part, col_part))  # (B, H, nb, m, D)
    return finish(torch.cat(out, dim=-3).flatten(-3, -2), n, q.dtype)  # (B, H, N, D)


def plan(device) -> str:
    """Which plan a call on `device` takes (on meta, the plan of the device it stands in for).

    "merged", off the CPU: each part's own softmax, merged afterwards by log-normalisers (_merged_block), two
    passes over the logits where one joint softmax over both parts takes six in eager PyTorch (max, shift,
    exponentiate, sum; three of them in place). Counted on meta at N = 65536, B = 1, H = 16, bf16, bytes read and
    written, joint -> merged: forward causal 84 -> 72 GB, bidirectional 104 -> 85 GB; forward + backward 422 -> 414
    and 452 -> 440 GB (see SoftmaxWithNormaliser). Each part's weights are gone before the other's logits are
    formed, so the peaks barely move: forward 5.6 -> 5.8 GiB causal, 11.0 -> 10.8 GiB bidirectional.
    "flash", on the CPU: the same parts and summaries in PyTorch's fused CPU flash kernel (mixture_flash.py), which
    never writes the logits out. Its first version measured against the eager joint softmax it replaced (later
    gains: flash_mixture) (N = 8192, B = 1, H = 16, D = 64,
    fp32, forward, 2 cores, heap retained as the sweep times, medians of 5, two alternating runs each): causal 346-347
    -> 261-266 ms, bidirectional 398-406 -> 310-320 ms (SDPA: 468-489 and 864-882 ms)."""
    return "merged" if planning_device_type(device) != "cpu" else "flash"


def _merged_block(row_part, col_part, part=None) -> torch.Tensor:
    """Each part's own softmax, merged by the parts' log-normalisers, as flash attention merges key blocks.
    One part at a time, its weights gone before the other's logits are formed: no more than two logits-sized
    tensors live at once (the same as the joint plan's two parts). part: _part_softmax, or it with its attend."""
    part = part or _part_softmax
    row_out, lse_row = part(*row_part)  # (B, H, nb, m, D), (B, H, nb, m, 1)
    col_out, lse_col = (x.transpose(-3, -2) for x in part(*col_part))  # (B, H, nb, m, D), (B, H, nb, m, 1)
    return merge_by_normalisers(row_out, lse_row, col_out, lse_col)


def _part_softmax(queries: torch.Tensor, kv: torch.Tensor, mask, attend=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A part's own softmax over its keys applied to their values, and its log-normaliser. `mask` fills the
    logits in place; every row must keep a finite logit (MixtureMasks sees to it): a row of -inf only would
    softmax to NaN. attend: both steps in one kernel (triton_softmax.fused_attend). queries (..., M, D), kv (2, ..., K, D) ->
    (..., M, D), (..., M, 1)."""
    logits = queries @ kv[0].transpose(-2, -1)  # (..., M, K)
    with torch.no_grad():  # see MixtureMasks
        band = mask(logits)  # a causal triangle the fused kernel drops; None unless asked for
    if attend is not None:
        return attend(logits, kv[1], band=band)
    weights, lse = SoftmaxWithNormaliser.apply(logits)  # (..., M, K), (..., M, 1)
    del logits
    return weights @ kv[1], lse


class SoftmaxWithNormaliser(torch.autograd.Function):
    """softmax(x) over the last axis and its log-normaliser logsumexp(x), (..., K) -> (..., K), (..., 1).

    Forward: one fused softmax and one more read. At the row maximum j*, softmax = 1 / Z exactly, so
    log Z = max - log(w[j*]). Backward: d x = softmax's backward of the weights' gradient + w * (the
    normaliser's gradient), one fused softmax backward and one in-place multiply-add, from the weights alone.
    Autograd through max, gather and log built two logits-sized scatters and three additions instead:
    counted on meta at N = 65536, Mixture's forward + backward moved ~30-45 GB more than this."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor):
        top, at = logits.max(dim=-1, keepdim=True)  # (..., 1) each
        weights = torch.softmax(logits, dim=-1)  # (..., K)
        lse = top - torch.log(weights.gather(-1, at))  # (..., 1)
        ctx.save_for_backward(weights)
        return weights, lse

    @staticmethod
    def backward(ctx, grad_weights, grad_lse):
        (weights,) = ctx.saved_tensors
        if grad_weights is None:
            return weights * grad_lse
        grad = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)  # w * (g - sum(g w))
        return grad if grad_lse is None else grad.addcmul_(weights, grad_lse)


def _summaries(qkv: torch.Tensor, valid: torch.Tensor | None, reverse: bool, out: torch.Tensor, attend=None) -> None:
    """For every group (a row or a column; qkv stacked, layout (3, B, H, G, T, D)) and position t,
    the summary of the group's tokens strictly before t (after t when `reverse`): max-pooled key,
    and the softmax attention of the max-pooled query over those tokens. Writes k_hat and v_hat
    into `out` (2, B, H, G, T, D), any strides; positions with an empty region get finite filler (masked later).
    Positions go in SUMMARY_BLOCKS blocks, each against only the keys on its side of the block's
    far end, which skips most of the masked triangle (3/4 of the T x T logits are formed). Without
    padding only the keys inside the block need a mask (a triangle); keys beyond it are all seen.
    attend (backend=triton): the fused kernels, (from logits, from queries and keys); without padding the triangle is
    a Band and the kernel forms the logits too (counted at N = 65536, bf16, forward: Mixture 41.4 -> 36.6 GB causal,
    47.6 -> 41.2 bidirectional; forward + backward 424.6 -> 424.2 and 452.6 -> 452.1)."""
    method = "triton" if attend else None  # backend=triton: the running max in one kernel too
    valid_keys = None if valid is None else valid[..., None]
    pooled = prefix_max(qkv[:2], -2, reverse=reverse, valid=valid_keys, method=method)  # (2, B, H, G, T, D)
    size = qkv.shape[-2]
    out[0] = pooled[1]
    t = torch.arange(size, device=qkv.device)  # (T,)
    for a, b in row_blocks(size, SUMMARY_BLOCKS["merged"]):
        lo, hi = (a, size) if reverse else (0, b)  # the keys positions [a, b) can reach
        # (B, H, G, b - a, D) pooled queries; (B, H, G, hi - lo, D) keys and values
        queries, keys, values = pooled[0, ..., a:b, :], qkv[1, ..., lo:hi, :], qkv[2, ..., lo:hi, :]
        if valid is None and attend:  # the triangle below, dropped in the kernel: row i drops keys [a, a + i] or [a + i, b)
            band = Band(0, 0, 1, 1) if reverse else Band(a - lo, 1, hi - lo)
            out[1, ..., a:b, :] = attend[1](queries, keys, values, band=band)[0]  # (B, H, G, b - a, D)
            continue
        logits = queries @ keys.transpose(-2, -1)  # (B, H, G, b - a, hi - lo)
        with torch.no_grad():  # as in the joint softmax (see MixtureMasks)
            if valid is None:  # keys [a, b): u <= t (reverse) or u >= t is not strictly before / after the position
                span = t[a:b]
                drop = (span[None, :] <= span[:, None]) if reverse else (span[None, :] >= span[:, None])  # (b - a, b - a)
                logits[..., a - lo : b - lo].masked_fill_(drop, mask_value(pooled))  # (B, H, G, b - a, b - a)
            else:
                outside = (t[None, lo:hi] <= t[a:b, None]) if reverse else (t[None, lo:hi] >= t[a:b, None])  # (b - a, hi - lo)
                logits.masked_fill_(outside | ~valid[:, None, lo:hi], mask_value(pooled))  # (G, b - a, hi - lo)
        # (B, H, G, b - a, D)
        out[1, ..., a:b, :] = attend[0](logits, values)[0] if attend else torch.softmax(logits, dim=-1) @ values
