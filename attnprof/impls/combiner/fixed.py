"""Combiner-Fixed (Ren et al. 2021, eq. 10): blocks of s tokens, own block direct, others summarised.

Query i in block b sees the keys of its own block directly (causal: j <= i) and every other block
b' (causal: b' < b) through one summary: key = max-pool of the block's keys, value = softmax
attention of the block's max-pooled query over the block. One joint softmax over the s direct
logits and the nb region logits, as TF `sqrt_fixed_full` / JAX `_SelfAttSqrtn` compute it (with
backend="triton", each part's own softmax in the fused kernel, merged by log-normalisers: the same softmax; on the
CPU, the same merge with each part in PyTorch's fused CPU flash kernel, see plan).

Deviation from the reference code: in bidirectional mode TF leaves the region logits unmasked,
so the own block is counted twice (directly and as a summary); here it is counted once (paper
eq. 10). Lengths that are not a multiple of s are padded; padded keys are excluded.
"""

from __future__ import annotations

import torch

from attnprof.impls.base import planning_device_type
from attnprof.impls.combiner.common import finish, joint_softmax, local_attention, mask_value, masked_max, merge_by_normalisers, to_blocks
from attnprof.impls.combiner.flash_cpu import merged_attention
from attnprof.impls.combiner.triton_softmax import Band, fused_attend


def fixed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None, fused: bool = False
) -> torch.Tensor:
    """fused: the direct and the region logits each through the fused softmax kernel, merged by their
    log-normalisers (backend="triton", see _fused_parts), instead of one joint softmax in eager ops."""
    n = q.shape[-2]
    (qb, kb, vb), pad = to_blocks(q, k, v, block_size)  # (B, H, nb, s, D) each; pad (nb, s) or None
    nb, s = qb.shape[-3], qb.shape[-2]
    qs = qb.flatten(-3, -2)  # (B, H, L, D), L = nb * s
    k_hat = masked_max(kb, None if pad is None else pad[..., None], dim=-2)  # (B, H, nb, D)
    q_hat = masked_max(qb, None if pad is None else pad[..., None], dim=-2)  # (B, H, nb, D)
    v_hat = local_attention(q_hat, kb, vb, None if pad is None else ~pad)  # (B, H, nb, D)
    if fused:
        return finish(_fused_parts(qb, kb, vb, k_hat, v_hat, n, causal, q.dtype), n, q.dtype)  # (B, H, N, D)
    if plan(q.device) == "flash" and v.shape[-1] == q.shape[-1]:  # the kernel takes one head dim for q, k and v
        return finish(_flash_parts(qb, kb, vb, k_hat, v_hat, pad, causal), n, q.dtype)  # (B, H, N, D)
    direct = qb @ kb.transpose(-2, -1)  # (B, H, nb, s, s)
    region = (qs @ k_hat.transpose(-2, -1)).unflatten(-2, (nb, s))  # (B, H, nb, s, nb)
    parts = [(direct, _direct_drop(pad, s, causal, q.device), False), (region, _region_drop(nb, causal, q.device), False)]
    (w_direct, w_region), total = joint_softmax(parts)  # in place: no N x (s + nb) tensor beyond the logits
    out = (w_direct @ vb).flatten(-3, -2).add_(w_region.flatten(-3, -2) @ v_hat)  # (B, H, L, D)
    return finish(out.div_(total.flatten(-2, -1).unsqueeze(-1)), n, q.dtype)  # (B, H, N, D)


def plan(device) -> str:
    """The plan a call on `device` takes: "flash" on the CPU (_flash_parts; the joint softmax where v is wider or
    narrower than q, which the fused kernel does not take), "joint" elsewhere (the eager joint softmax; backend=triton:
    the fused kernels); on meta, the plan of the device it stands in for."""
    return "flash" if planning_device_type(device) == "cpu" else "joint"


def _direct_drop(pad: torch.Tensor | None, s: int, causal: bool, device) -> torch.Tensor | None:
    """True where query (block, i) must not see key j of its own block: (nb, s, s) or (s, s)."""
    drop = None
    if causal:
        drop = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)  # (s, s) j > i
    if pad is not None:
        padded_key = ~pad[:, None, :]  # (nb, 1, s)
        drop = padded_key if drop is None else drop | padded_key
    return drop


def _region_drop(nb: int, causal: bool, device) -> torch.Tensor:
    """True where a query of block b must not use the summary of block b': (nb, 1, nb)."""
    b = torch.arange(nb, device=device)  # (nb,)
    drop = b[None, :] >= b[:, None] if causal else b[None, :] == b[:, None]  # (nb, nb)
    return drop[:, None, :]  # (nb, 1, nb)


def _flash_parts(qb, kb, vb, k_hat, v_hat, pad, causal: bool) -> torch.Tensor:
    """The CPU plan: the direct and the region part each in PyTorch's fused CPU flash kernel, merged by their
    log-normalisers (flash_cpu.merged_attention), so no logits are written out. Measured against the joint softmax
    (N = 8192, B = 1, H = 16, D = 64, fp32, forward, 2 cores, heap retained as the sweep times, medians of 5, two
    alternating runs each): causal 92.5-99.9 -> 60.4-62.1 ms, bidirectional 70.1-70.2 -> 58.0-60.9 ms (SDPA: 465-479
    and 869-896 ms). qb, kb, vb (B, H, nb, s, D); k_hat, v_hat (B, H, nb, D) -> (B, H, L, D)."""
    nb, s = qb.shape[-3], qb.shape[-2]
    direct_drop = _direct_drop(pad, s, causal, qb.device)  # (s, s), (nb, 1 | s, s) or None
    direct_mask = (
        None if direct_drop is None else _additive(direct_drop if direct_drop.dim() == 2 else direct_drop.expand(nb, s, s)[None], qb)
    )
    region_mask = _additive(_region_drop(nb, causal, qb.device).expand(nb, s, nb).flatten(0, 1), qb)  # (L, nb)
    # a query with no summary to see (causal: the first block; a one-block sequence): finite filler, weight 0 in the merge
    region_mask.masked_fill_(region_mask.isinf().all(-1, keepdim=True), mask_value(region_mask))
    direct = (qb.flatten(0, 1), kb.flatten(0, 1), vb.flatten(0, 1), direct_mask)  # (B H, nb, s, D) each
    region = (
        qb.flatten(-3, -2).flatten(0, 1)[:, None],
        k_hat.flatten(0, 1)[:, None],
        v_hat.flatten(0, 1)[:, None],
        region_mask,
    )  # (B H, 1, L | nb, D)
    out = merged_attention(direct, region, 1.0, swapped=False)  # (B H, nb, s, D); q was scaled by to_blocks
    return out.unflatten(0, qb.shape[:2]).flatten(-3, -2)  # (B, H, L, D)


def _additive(drop: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """-inf where `drop`, 0 elsewhere, in like's dtype and on its device."""
    return like.new_zeros(drop.shape).masked_fill_(drop, float("-inf"))


def _fused_parts(qb, kb, vb, k_hat, v_hat, n: int, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """The direct and the region part each through the fused softmax kernel (triton_softmax), merged by their
    log-normalisers: their weights are never written, and the kernel drops the masks' keys (Band) where the joint
    softmax filled them in the logits. Where a Band is all the masking, the kernel forms the logits from queries and
    keys too (softmax_values_qk): the region part always, the direct part unless the last block holds padding, whose
    keys are filled in its logits. One part at a time, as Mixture's merged plan: no more logits alive at once than the
    joint plan holds. Counted on meta at N = 65536, B = 1, H = 16, bf16, forward, bytes moved: see combiner_attention.
    qb, kb, vb (B, H, nb, s, D); k_hat, v_hat (B, H, nb, D) -> (B, H, L, D); dtype: the inputs'."""
    nb, s = qb.shape[-3], qb.shape[-2]
    tail = n - (nb - 1) * s  # real tokens in the last block, 1 .. s
    direct_band = Band(1, 1, s) if causal else None
    if tail == s:
        direct_out, direct_lse = fused_attend(dtype, from_queries=True)(qb, kb, vb, band=direct_band)  # (B, H, nb, s, D), (..., 1)
    else:
        direct = qb @ kb.transpose(-2, -1)  # (B, H, nb, s, s)
        with torch.no_grad():  # a dropped logit weighs 0 and gets no gradient: autograd need not know of the fill
            direct[..., -1, :, tail:].fill_(float("-inf"))  # the last block's padded keys (no other block holds padding)
        direct_out, direct_lse = fused_attend(dtype)(direct, vb, band=direct_band)  # (B, H, nb, s, D), (B, H, nb, s, 1)
        del direct
    # query t of block t // s drops the summaries of blocks t // s .. nb - 1 (causal) or of its own block alone; the
    # first block's queries keep none when causal (and every query of a one-block sequence): lse -inf, weight 0
    band = Band(0, 1, nb, 0, s) if causal else Band(0, 1, 1, 1, s)
    # (B, H, L, D), (B, H, L, 1): query row t against the block summaries
    region_out, region_lse = fused_attend(dtype, from_queries=True)(qb.flatten(-3, -2), k_hat, v_hat, band=band)
    return merge_by_normalisers(direct_out.flatten(-3, -2), direct_lse.flatten(-3, -2), region_out, region_lse)
