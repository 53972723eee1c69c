"""Combiner-Fixed (Ren et al. 2021, eq. 10): blocks of s tokens, own block direct, others summarised.

Query i in block b sees the keys of its own block directly (causal: j <= i) and every other block
b' (causal: b' < b) through one summary: key = max-pool of the block's keys, value = softmax
attention of the block's max-pooled query over the block. One joint softmax over the s direct
logits and the nb region logits, as TF `sqrt_fixed_full` / JAX `_SelfAttSqrtn` compute it.

Deviation from the reference code: in bidirectional mode TF leaves the region logits unmasked,
so the own block is counted twice (directly and as a summary); here it is counted once (paper
eq. 10). Lengths that are not a multiple of s are padded; padded keys are excluded.
"""

from __future__ import annotations

import torch

from attnprof.impls.combiner.common import finish, joint_softmax, local_attention, masked_max, to_blocks


def fixed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, block_size: int | None = None
) -> torch.Tensor:
    n = q.shape[-2]
    (qb, kb, vb), pad = to_blocks(q, k, v, block_size)  # (B, H, nb, s, D) each; pad (nb, s) or None
    nb, s = qb.shape[-3], qb.shape[-2]
    qs = qb.flatten(-3, -2)  # (B, H, L, D), L = nb * s
    k_hat = masked_max(kb, None if pad is None else pad[..., None], dim=-2)  # (B, H, nb, D)
    q_hat = masked_max(qb, None if pad is None else pad[..., None], dim=-2)  # (B, H, nb, D)
    v_hat = local_attention(q_hat, kb, vb, None if pad is None else ~pad)  # (B, H, nb, D)
    direct = qb @ kb.transpose(-2, -1)  # (B, H, nb, s, s)
    region = (qs @ k_hat.transpose(-2, -1)).unflatten(-2, (nb, s))  # (B, H, nb, s, nb)
    parts = [(direct, _direct_drop(pad, s, causal, q.device), False), (region, _region_drop(nb, causal, q.device), False)]
    (w_direct, w_region), total = joint_softmax(parts)  # in place: no N x (s + nb) tensor beyond the logits
    out = (w_direct @ vb).flatten(-3, -2).add_(w_region.flatten(-3, -2) @ v_hat)  # (B, H, L, D)
    return finish(out.div_(total.flatten(-2, -1).unsqueeze(-1)), n, q.dtype)  # (B, H, N, D)


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
